"""SG-One contender (oshp/models/sgone.py): shapes, learning, the guidance and k-way background pinned by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from toy import random_episode

from oshp.models.registry import build_model
from oshp.models.episode import LOW_LOGIT
from oshp.models.sgone import SGOne, SGOneConfig, SGOneHead, build

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = "mobilenetv3_small_050"


def tiny(way: str = "k", **kw) -> SGOne:
    torch.manual_seed(0)
    return build(18, way, TINY, guide_dim=32, seg_dim=32, **kw)


def episode(size: int = 64, batch: int = 2):
    """Support classes 2 and 4 (sample 0) / 2 (sample 1); the query also holds 11, absent from the supports."""
    return random_episode(size, batch)


class _ImageAsFeatures(nn.Module):
    """Stub embedding network: the image itself is the feature map (3 channels, stride 1)."""

    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fused_and_high(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class _DeepIsPooled(_ImageAsFeatures):
    """Stub whose deep map is the image average-pooled by 2 (a coarser grid than the fused map)."""

    def fused_and_high(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, nn.functional.avg_pool2d(x, 2)


def _center_tap(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 3x3 conv that copies input channel i to output channel i (i < out_ch)."""
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for i in range(out_ch):
            conv.weight[i, i, 1, 1] = 1.0
    return conv


def test_guidance_without_residual_and_kway_background_by_hand():
    """1 x 2 images whose pixels are the features; prototypes, cosine maps, guidance and eq. 6's background by hand.

    Support: pixel 0 = (1, 0, 0) is class 2, pixel 1 = (0, 1, 0) is class 4, so p_2 = e1, p_4 = e2.
    Query pixels (3, 4, 0) and (0, -2, 1): m_2 = (0.6, 0), m_4 = (0.8, -2/sqrt5).
    Segmentation features h = first two channels: (3, 4), (0, -2). r_c = m_c * h (no "+ h"):
    r_2 = (1.8, 2.4), (0, 0); r_4 = (2.4, 3.2), (0, 4/sqrt5). The head copies r (ReLU of non-negative values) and the
    classifier reads channel 0 as l_c and channel 1 as the class's background score: l_2 = (1.8, 0), l_4 = (2.4, 0),
    l_bg = mean over the two classes = (2.8, 2/sqrt5); omega is the identity at initialisation.
    """
    model = build(18, "k", TINY, guide_dim=3, seg_dim=2)
    model.backbone = _ImageAsFeatures()
    model.guidance = _center_tap(3, 3)
    model.segmentation = _center_tap(3, 2)
    model.head = SGOneHead(2)
    model.head.trunk[0] = _center_tap(2, 2)
    with torch.no_grad():
        model.head.classifier.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        model.head.classifier.bias.zero_()
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    query = torch.tensor([[3.0, 0.0], [4.0, -2.0], [0.0, 1.0]]).view(1, 3, 1, 2)
    label = torch.tensor([[[2, 4]]])
    out = model.eval()(query, support, label)
    r5 = 2 / math.sqrt(5)
    assert torch.allclose(out["similarity"], torch.tensor([[[0.6, 0.0]], [[0.8, -r5]]]), atol=1e-6)
    pred = out["pred"][0, :, 0]  # 18 x 2
    assert torch.allclose(pred[2], torch.tensor([1.8, 0.0]), atol=1e-6)
    assert torch.allclose(pred[4], torch.tensor([2.4, 0.0]), atol=1e-6)
    assert torch.allclose(pred[0], torch.tensor([2.8, r5]), atol=1e-6)  # with "+ h": 6.8 at pixel 0
    others = [c for c in range(18) if c not in (0, 2, 4)]
    assert (pred[others] == LOW_LOGIT).all()
    # the guidance itself: features times similarity, nothing added
    h, m = torch.tensor([[[[3.0]], [[4.0]]]]), torch.tensor([[[0.5]]])
    assert torch.equal(SGOneHead.guide(h, m), torch.tensor([[[[1.5]], [[2.0]]]]))


def test_guidance_reads_the_deep_map_and_is_upsampled_to_the_segmentation_grid():
    """SG-One's guidance conv reads the deep features while segmentation reads the fused ones; "fused" reads one map."""
    support = torch.zeros(1, 3, 2, 4)
    support[0, 0, :, :2] = 1.0  # left 2 x 2 block: (1, 0, 0), class 2; right block: (0, 1, 0), class 4
    support[0, 1, :, 2:] = 1.0
    label = torch.tensor([[[2, 2, 4, 4], [2, 2, 4, 4]]])
    query = torch.zeros(1, 3, 2, 4)
    query[0, 0, :, :2] = 1.0  # left block (1, 0, 0); right block (1, 1, 0)
    query[0, :2, :, 2:] = 1.0
    sims = {}
    for source in ("deep", "fused"):
        model = build(18, "k", TINY, guide_dim=3, seg_dim=2, guidance_source=source)
        model.backbone = _DeepIsPooled()
        model.guidance = _center_tap(3, 3)
        model.segmentation = _center_tap(3, 2)
        sims[source] = model.eval()(query, support, label)["similarity"]
    # deep: a 1 x 2 grid (left cos 1 to p_2, right cos 1/sqrt2), bilinearly upsampled to the 2 x 4 grid
    deep = nn.functional.interpolate(torch.tensor([[[[1.0, 1 / math.sqrt(2)]]]]), size=(2, 4), mode="bilinear")
    assert sims["deep"].shape == (2, 2, 4)
    assert torch.allclose(sims["deep"][0], deep[0, 0], atol=1e-6)
    # fused: every pixel on its own grid, no interpolation
    assert torch.allclose(sims["fused"][0], torch.tensor([[1.0, 1.0, 0.5 ** 0.5, 0.5 ** 0.5]] * 2), atol=1e-6)
    with pytest.raises(ValueError, match="guidance_source"):
        SGOneConfig(guidance_source="shallow")


def test_class_balanced_loss_weighs_each_class_the_same():
    """The balanced loss is the mean of the per-class mean CE; with equal areas it equals plain CE."""
    from oshp.losses import class_balanced_cross_entropy, cross_entropy

    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 1, 1, 1]]])
    per = nn.functional.cross_entropy(logits, target, reduction="none").flatten()
    assert class_balanced_cross_entropy(logits, target).item() == pytest.approx(
        0.5 * (per[0] + per[1:].mean()).item())
    even = torch.tensor([[[0, 0, 1, 1]]])
    assert class_balanced_cross_entropy(logits, even).item() == pytest.approx(cross_entropy(logits, even).item())
    assert class_balanced_cross_entropy(logits, torch.full((1, 1, 4), 255)).item() == 0.0
    model = tiny("1", class_balanced_loss=True).train()
    q, s, sl, ql = random_episode(64, 1, second_class=False)
    out = model(q, s, sl, query_label=ql)
    target = model.restrict_query_label(ql, [[2]])
    assert out["loss"].item() == pytest.approx(class_balanced_cross_entropy(out["pred"], target).item(), rel=1e-5)


def test_background_is_the_mean_of_class_scores_per_sample():
    """Two samples with 2 and 1 classes: each background is omega(mean of its own classes' background scores)."""
    head = SGOneHead(2)
    head.trunk = nn.Identity()
    with torch.no_grad():
        head.classifier.weight.copy_(torch.eye(2).view(2, 2, 1, 1))  # l_c = channel 0, b_c = channel 1
        head.classifier.bias.zero_()
        head.omega.weight.fill_(2.0)
        head.omega.bias.fill_(0.5)
    feats = torch.tensor([[7.0, 1.0], [8.0, 2.0], [9.0, 3.0]]).view(3, 2, 1, 1)
    fg, bg = head(feats, torch.ones(3, 1, 1), torch.tensor([0, 0, 1]), 2)
    assert torch.equal(fg.flatten(), torch.tensor([7.0, 8.0, 9.0]))
    assert torch.allclose(bg.flatten(), torch.tensor([2.0 * 1.5 + 0.5, 2.0 * 3.0 + 0.5]))


def test_paper_configuration_size_on_meta():
    """Xception-65 through DeepLabFeatures plus the two 3x3 branches and the head (Table 5 gives no SG-One row)."""
    with torch.device("meta"):
        model = build_model("sgone", num_classes=18, way="k", backbone="xception65")
    own = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))
    assert own == (256 * 9 * 256 + 256) + (256 * 9 * 128 + 128) + (128 * 9 * 128 + 128) + (128 * 2 + 2) + 2
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert 38.0 < total < 41.0, total  # the embedding network (~38 M) + 1.03 M of SG-One layers


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown SG-One option\(s\) \['residual'\]"):
        build(18, "k", TINY, residual=True)
    with pytest.raises(ValueError, match="way must be 'k' or '1'"):
        SGOneConfig(way="2")
    with pytest.raises(ValueError, match="mask_downsample"):
        SGOneConfig(mask_downsample="bilinear")
    model = tiny("1").eval()
    q, s, sl, _ = episode()
    with pytest.raises(ValueError, match="exactly one foreground class"):
        model(q, s, sl)
    with pytest.raises(ValueError, match="no foreground pixels"):
        model(q, s, torch.zeros_like(sl))
