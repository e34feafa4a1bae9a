"""PANet contender (oshp/models/panet.py): shapes, learning, cosine logits and PAR pinned by hand, VGG-16 size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from toy import random_episode

from oshp.models.registry import build_model
from oshp.models.panet import PANet, PANetConfig, alignment_loss, build, dilate_to_stride, prototype_logits

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = "mobilenetv3_small_050"


def tiny(**kw) -> PANet:
    torch.manual_seed(0)
    return build(18, "1", TINY, **kw)


def episode(size: int = 64, batch: int = 2):
    """1-way: class 2 in both supports; the query also holds 4 and 11 (background for this episode)."""
    return random_episode(size, batch, second_class=False, query_second_class=True)


def log1pexp(x: float) -> float:
    return math.log1p(math.exp(x))


def _cos(a: tuple, b: tuple) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _ce(bg: float, fg: float, target: int) -> float:
    """-log softmax([bg, fg])[target]."""
    return log1pexp((fg - bg) if target == 0 else (bg - fg))


def test_prototype_logits_and_par_loss_by_hand():
    """Images of 1 x 3 pixels are their own features; prototypes, 20 x cosine, CE and PAR by hand.

    Support pixels: (1, 0, 0) class 2 (fg), (0, 1, 0) background, (5, 5, 5) ignore -> p_fg = e1, p_bg = e2 (the
    ignore pixel is in neither prototype). Query pixels: (3, 4, 0), (4, 3, 0), (2, 3, 6) labelled bg, 2, 11 (= bg).
    Logits [bg, fg] = 20 x cos: (16, 12), (12, 16), (60/7, 40/7); the prediction is bg, fg, bg.
    PAR: query prototypes bg = mean((3, 4, 0), (2, 3, 6)) = (2.5, 3.5, 3), fg = (4, 3, 0); they score the support's
    pixels by 20 x cos, cross-entropy against (fg, bg, ignore), averaged over the two scored pixels.
    """
    model = build(18, "1", TINY)
    model.encoder = nn.Identity()
    support = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, 0.0, 5.0]]).view(1, 3, 1, 3)
    query = torch.tensor([[3.0, 4.0, 2.0], [4.0, 3.0, 3.0], [0.0, 0.0, 6.0]]).view(1, 3, 1, 3)
    support_label = torch.tensor([[[2, 0, 255]]])
    query_label = torch.tensor([[[0, 2, 11]]])
    out = model.train()(query, support, support_label, query_label=query_label)
    logits = out["pred"][0, :, 0]  # 2 x 3
    assert torch.allclose(logits, torch.tensor([[16.0, 12.0, 60 / 7], [12.0, 16.0, 40 / 7]]), atol=1e-4)
    expected_query = (_ce(16, 12, 0) + _ce(12, 16, 1) + _ce(60 / 7, 40 / 7, 0)) / 3
    assert out["loss_query"].item() == pytest.approx(expected_query, rel=1e-5)
    bg, fg = (2.5, 3.5, 3.0), (4.0, 3.0, 0.0)
    s0, s1 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    expected_par = (_ce(20 * _cos(s0, bg), 20 * _cos(s0, fg), 1) + _ce(20 * _cos(s1, bg), 20 * _cos(s1, fg), 0)) / 2
    assert expected_par == pytest.approx(0.1162, abs=1e-4)  # (0.0016 + 0.2308) / 2: not a vanishing term
    assert out["loss_par"].item() == pytest.approx(expected_par, rel=1e-4)
    assert out["loss"].item() == pytest.approx(expected_query + expected_par, rel=1e-4)
    # the weight of PAR, and switching it off
    model.config.lambda_par = 0.5
    out = model(query, support, support_label, query_label=query_label)
    assert out["loss"].item() == pytest.approx(expected_query + 0.5 * expected_par, rel=1e-4)
    model.config.alignment = False
    out = model(query, support, support_label, query_label=query_label)
    assert out["loss_par"].item() == 0.0 and out["loss"].item() == pytest.approx(expected_query, rel=1e-5)


def test_par_skips_samples_without_predicted_foreground():
    """Sample 0 predicts no foreground (adds 0), sample 1 does; the sum is divided by the batch (PANet)."""
    fq = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2).repeat(2, 1, 1, 1)
    qlog = torch.tensor([[[[5.0, 5.0]], [[0.0, 0.0]]], [[[5.0, 0.0]], [[0.0, 5.0]]]])  # B x 2 x 1 x 2
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2).repeat(2, 1, 1, 1)
    target = torch.tensor([[[1, 0]], [[1, 0]]])
    fq.requires_grad_(True)
    loss = alignment_loss(fq, qlog, fs, target, scale=20.0)
    # sample 1: both query prototypes are e1 -> support logits (20, 20), (0, 0): CE log 2 each
    assert loss.item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    loss.backward()  # gradient reaches the query features through the query prototypes
    assert fq.grad is not None
    empty = alignment_loss(fq[:1], qlog[:1], fs[:1], target[:1], scale=20.0)
    assert empty.item() == 0.0 and empty.requires_grad
    assert torch.allclose(prototype_logits(fs[:1], torch.tensor([[[1.0, 1.0]]]), 20.0),
                          torch.full((1, 1, 1, 2), 20 / math.sqrt(2)))


def test_paper_configuration_vgg16_stride8_size_on_meta():
    """Table 5: PANet 14.7 M parameters (VGG-16's 13 conv layers; nothing else is learned)."""
    with torch.device("meta"):
        model = build_model("panet", num_classes=18, way="1", backbone="vgg16")
        feats = model.encoder(torch.empty(1, 3, 512, 512))
    params = sum(p.numel() for p in model.parameters())
    assert params == 14_714_688 and abs(params / 1e6 - 14.7) <= 0.1 * 14.7
    assert model.encoder.reduction == 8 and feats.shape == (1, 512, 64, 64)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.dilation[0] for c in convs[-3:]] == [2, 2, 2]
    assert not isinstance(list(model.encoder.features.body.children())[-1], nn.ReLU)  # conv5_3 without ReLU


def test_dilate_to_stride_on_a_flat_body():
    body = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, stride=2, padding=1),
                         nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1))
    dilate_to_stride(body, 2)
    assert body(torch.zeros(1, 1, 16, 16)).shape[-1] == 8
    assert [body[i].dilation[0] for i in (2, 3, 5)] == [1, 2, 4]
    nested = nn.Sequential(nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(1, 1, 3, stride=2)))
    with pytest.raises(ValueError, match="nested module"):
        dilate_to_stride(nested, 2)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown PANet option\(s\) \['scaler'\]"):
        build(18, "1", TINY, scaler=20)
    with pytest.raises(ValueError, match="1-way contender"):
        PANetConfig(way="k")
    with pytest.raises(ValueError, match="evaluated 1-way"):
        build_model("panet", num_classes=18, way="k", backbone=TINY)
    with pytest.raises(ValueError, match="test_size"):
        PANetConfig(test_size=0)
    with pytest.raises(ValueError, match="pooling"):
        PANetConfig(pooling="max")
    model = tiny().eval()
    q, s, sl, _ = episode()
    two = sl.clone()
    two[:, 40:50, 40:50] = 4
    with pytest.raises(ValueError, match="exactly one foreground class"):
        model(q, s, two)
