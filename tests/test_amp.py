"""AMP contender (Siam et al., ICCV 2019; EOP-Net paper section 6.3): masked proxies, adaptation, multi-resolution
imprinting, on hand-made tensors and a tiny CPU backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toy import random_episode

from oshp.models.registry import build_model
from oshp.models.amp import AMP, adapt_weights, build, cosine_scores, fuse_levels, masked_proxies, pick_levels
from oshp.models.episode import LOW_LOGIT

TINY = "mobilenetv3_small_050"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(way: str = "k", **options) -> AMP:
    torch.manual_seed(0)
    return build(num_classes=18, way=way, backbone=TINY, embed_dim=32, **options)


def episode(size: int = 64, batch: int = 2, way: str = "k"):
    return random_episode(size, batch, second_class=way == "k")


# ---------------------------------------------------------------------------------------------------- mechanism
def test_masked_proxy_normalises_pixels_then_the_average():
    f = torch.zeros(1, 2, 2, 2)
    f[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # unit: (0.6, 0.8)
    f[0, :, 0, 1] = torch.tensor([0.0, 2.0])  # unit: (0, 1)
    f[0, :, 1, 0] = torch.tensor([7.0, 0.0])
    w = torch.zeros(1, 2, 2, 2)
    w[0, 0, 0] = 1.0  # top row
    proxies, present = masked_proxies(f, w)
    # mean of the unit vectors (0.3, 0.9), normalised: (1, 3)/sqrt(10) (the raw mean (1.5, 3) would give (1, 2)/sqrt 5)
    assert torch.allclose(proxies[0, 0], torch.tensor([1.0, 3.0]) / math.sqrt(10), atol=1e-6)
    assert torch.equal(proxies[0, 1], torch.zeros(2)) and present.tolist() == [[True, False]]


def test_adaptation_rule_and_imprinting_by_hand():
    p = torch.tensor([1.0, 3.0]) / math.sqrt(10)
    proxies = torch.stack([p, p, torch.zeros(2)])
    weights = torch.tensor([[2.0, 0.0], [5.0, 5.0], [0.0, -4.0]])
    present = torch.tensor([True, True, False])
    learned = torch.tensor([True, False, True])
    out = adapt_weights(weights, proxies, present, learned, alpha=0.25)
    # learned row: normalise(0.25 p + 0.75 (1, 0)) = normalise(0.75 + 0.25/sqrt10, 0.75/sqrt10)
    a = torch.tensor([0.75 + 0.25 / math.sqrt(10), 0.75 / math.sqrt(10)])
    assert torch.allclose(out[0], a / a.norm(), atol=1e-6)
    assert torch.allclose(out[0], torch.tensor([0.961433, 0.275040]), atol=1e-5)
    assert torch.allclose(out[1], p)  # never learned: imprinted with the proxy, whatever its old weights
    assert torch.allclose(out[2], torch.tensor([0.0, -1.0]))  # no support pixels: unchanged (normalised)
    assert torch.allclose(adapt_weights(weights, proxies, present, learned, alpha=1.0)[0], p)


def test_cosine_scores_and_fcn8s_fusion_by_hand():
    fine = torch.zeros(1, 2, 2, 2)
    fine[0, 0] = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    fine[0, 1] = torch.tensor([[4.0, 1.0], [0.0, 1.0]])
    coarse = torch.tensor([0.0, 5.0]).view(1, 2, 1, 1)
    w_fine, w_coarse = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    s_fine = cosine_scores(fine, w_fine, 10.0)
    assert torch.allclose(s_fine[0, 0], torch.tensor([[6.0, 0.0], [10.0, 10 / math.sqrt(2)]]), atol=1e-5)
    s_coarse = cosine_scores(coarse, w_coarse, torch.tensor(2.0))  # cos 1 -> 2
    fused = fuse_levels([s_fine, s_coarse])  # coarse upsampled (constant 2) and added
    assert torch.allclose(fused[0, 0], torch.tensor([[8.0, 2.0], [12.0, 2 + 10 / math.sqrt(2)]]), atol=1e-5)
    per_sample = cosine_scores(fine, w_fine.unsqueeze(0), 10.0)  # N x K x D weights give the same
    assert torch.allclose(per_sample, s_fine)


def test_levels_are_the_deepest_map_of_the_coarsest_strides():
    assert pick_levels([1, 2, 4, 8, 16, 32], 3) == [3, 4, 5]  # timm vgg16: relu4_3, relu5_3, pool5
    assert pick_levels([2, 4, 8, 8, 8], 3) == [0, 1, 4]  # dilated to stride 8: the last stride-8 map
    assert pick_levels([4, 8, 8], 3) == [0, 2]  # fewer distinct strides than levels: fewer levels
    assert pick_levels([2, 4, 8, 16, 32], 1) == [4]


def test_multi_resolution_imprinting_in_the_model_by_hand():
    """Hand-made two-level features: the support adapts background and a base class and imprints a novel class at
    both resolutions; the query's logits are the scale-weighted sums of the cosines; the model's rows stay put."""
    model = tiny().eval()
    model.features = lambda x: [x[:, :2], F.avg_pool2d(x[:, :2], 2)]  # 8 x 8 and 4 x 4, 2-d "features"
    rows = torch.zeros(18, 2)
    rows[:, 0] = 1.0
    rows[0] = torch.tensor([1.0, 1.0])  # background, learned
    rows[1] = torch.tensor([-1.0, 0.0])  # base class 1, learned
    rows[2] = torch.tensor([5.0, -3.0])  # novel class 2, never learned
    model.classifiers = nn.ParameterList([nn.Parameter(rows.clone()), nn.Parameter(rows.clone())])
    model.scale = nn.Parameter(torch.tensor([1.0, 2.0]))
    model.learned.zero_()
    model.learned[[0, 1]] = True
    model.config.alpha = 0.5
    support = torch.zeros(1, 3, 8, 8)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    support[0, 0, :, :4] = 1.0  # background pixels (1, 0)
    support[0, 1, :, 4:6] = 1.0  # class 1 pixels (0, 1)
    label[0, :, 4:6] = 1
    support[0, 0, :, 6:] = 3.0  # class 2 pixels (3, 4): unit (0.6, 0.8)
    support[0, 1, :, 6:] = 4.0
    label[0, :, 6:] = 2
    query = torch.zeros(1, 3, 8, 8)
    query[0, 1] = 2.0  # every query pixel: unit (0, 1)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        pred = model(query, support, label)["pred"]
    # background: normalise(0.5 (1, 0) + 0.5 (1, 1)/sqrt2) = (cos 22.5, sin 22.5); class 1: normalise(0.5 (0, 1) +
    # 0.5 (-1, 0)) = (-1, 1)/sqrt2; class 2: the proxy (0.6, 0.8). Same at both levels; cosines with (0, 1) times
    # the scales 1 + 2.
    expected = {0: 3 * math.sin(math.pi / 8), 1: 3 / math.sqrt(2), 2: 3 * 0.8}
    for c, v in expected.items():
        assert torch.allclose(pred[0, c], torch.full((8, 8), v), atol=1e-5), c
    assert torch.all(pred[0, 3:] == LOW_LOGIT)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # per-episode copies only
    assert model.learned.nonzero().flatten().tolist() == [0, 1]


def test_paper_configuration_on_the_meta_device():
    with torch.device("meta"):
        model = build_model("amp", num_classes=18, way="k", backbone="vgg16")
    assert model.level_index == [3, 4, 5] and [c.shape for c in model.classifiers] == [(18, 512), (18, 512),
                                                                                      (18, 256)]
    params = sum(p.numel() for p in model.parameters())
    # VGG-16 conv layers 14,714,688 + fc 512*256+256 + classifiers 18*(512+512+256) + 3 scales
    assert params == 14_714_688 + 131_328 + 23_040 + 3


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown AMP option\(s\) \['alpah'\]"):
        tiny(alpah=0.3)
    with pytest.raises(ValueError, match="adaptation rate"):
        tiny(alpha=1.5)
    q, s, sl, _ = episode()
    with pytest.raises(ValueError, match="exactly one foreground class"):
        tiny("1").eval()(q, s, sl)
    with pytest.raises(ValueError, match="support mask has no foreground pixels"):
        tiny().eval()(q, s, torch.zeros_like(sl))
