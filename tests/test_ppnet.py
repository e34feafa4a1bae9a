"""PPNet contender (part-aware prototypes, 1-way, no semantic branch) on hand-made tensors and a tiny backbone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from toy import box_of_five_episode

from oshp.models.registry import build_model
from oshp.models.ppnet import PPNet, PPNetConfig, build, kmeans, part_prototypes, part_scores, region_pixels

TINY = "mobilenetv3_small_050"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**kw) -> PPNet:
    torch.manual_seed(0)
    return build(18, "1", TINY, **kw)


def episode(size: int = 64, batch: int = 2, seed: int = 0):
    return box_of_five_episode(size, batch, seed)


# ---------------------------------------------------------------------------------------------------- parts
def test_kmeans_finds_two_separated_groups_and_passes_gradient_through_the_means():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 11.0]],
                     requires_grad=True)
    centres, assign = kmeans(x, 2, iters=10)  # "spread" init: rows 0 and 5
    assert assign.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(centres, torch.tensor([[1 / 3, 1 / 3], [31 / 3, 31 / 3]]))
    centres[0].sum().backward()  # the first centre is the mean of rows 0-2
    assert torch.allclose(x.grad, torch.tensor([[1 / 3] * 2] * 3 + [[0.0] * 2] * 3))
    # the release's random initial centres come from torch's generator: reproducible under a seed
    torch.manual_seed(3)
    c2, _ = kmeans(x.detach(), 2, iters=10, init="random")
    torch.manual_seed(3)
    assert torch.equal(c2, kmeans(x.detach(), 2, iters=10, init="random")[0])


def test_kmeans_empty_cluster_gets_a_zero_centre_and_no_pixels_give_zeros():
    x = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    centres, assign = kmeans(x, 3, iters=3)  # spread init picks rows 0, 0, 1: the duplicate centre stays empty
    assert assign.tolist() == [0, 2]
    assert torch.equal(centres, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]))
    empty, _ = kmeans(torch.zeros(0, 2), 4)
    assert torch.equal(empty, torch.zeros(4, 2))


def test_part_prototypes_add_the_weighted_global_prototype():
    pixels = torch.tensor([[0.0, 0.0], [0.0, 2.0], [8.0, 0.0], [8.0, 2.0]])
    glob = pixels.mean(0)  # (4, 1)
    parts = part_prototypes(pixels, glob, num_parts=2, iters=5, init="spread", global_weight=0.8)
    assert torch.allclose(parts, torch.tensor([[0.0, 1.0], [8.0, 1.0]]) + 0.8 * torch.tensor([4.0, 1.0]))


def test_part_scores_take_the_best_part_by_hand():
    feats = torch.tensor([[[[1.0, 0.0, -1.0]], [[0.0, 2.0, 0.0]]]])  # pixels (1,0), (0,2), (-1,0)
    parts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # the zero part scores 0 everywhere
    s = part_scores(feats, parts, scale=20.0)
    assert torch.allclose(s[0, 0], torch.tensor([20.0, 20 / math.sqrt(2), 0.0]), atol=1e-5)


def test_region_pixels_upscale_and_fallback_for_thin_regions():
    feats = torch.arange(4.0).view(1, 2, 2)  # D = 1, cells 0 1 / 2 3
    mask = torch.tensor([[0, 1], [1, 1]])
    assert region_pixels(feats, mask, upscale=1).flatten().tolist() == [1.0, 2.0, 3.0]
    assert region_pixels(feats, mask, upscale=2).shape == (12, 1)  # 3 cells x 4 on the x2 grid
    big = torch.zeros(8, 8, dtype=torch.long)
    big[0, 0] = 1  # one input pixel: 1 cell (<= 10) on the 2 x 2 grid -> gathered at 8 x 8 instead
    px = region_pixels(feats, big, upscale=1, min_cells=10)
    assert px.shape == (1, 1) and px.item() == 0.0
    assert region_pixels(feats, torch.zeros(2, 2), upscale=1).shape == (0, 1)


def test_model_scores_query_pixels_against_support_parts_by_hand():
    """Features = the image itself (3-d): support foreground = red (top) + green (bottom), background = blue."""
    model = tiny(num_parts=2, foreground_upscale=1).eval()
    model.features = lambda images: images  # type: ignore[method-assign]
    red, green, blue = torch.eye(3)
    support = blue.view(1, 3, 1, 1).expand(1, 3, 8, 8).clone()
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    support[0, :, 2:4, 2:6] = red.view(3, 1, 1)
    support[0, :, 4:6, 2:6] = green.view(3, 1, 1)
    label[0, 2:6, 2:6] = 7
    query = torch.stack([red, green, blue, (red + blue) / 2], dim=1).view(1, 3, 1, 4)
    bg_parts, fg_parts = model.prototypes(support[0], label[0] == 7, label[0] == 0)
    glob = torch.tensor([0.5, 0.5, 0.0])  # mean of the foreground: half red, half green
    assert torch.allclose(fg_parts, torch.stack([red, green]) + 0.8 * glob)
    assert torch.allclose(bg_parts[0], 1.8 * blue)  # every background pixel is blue: one cluster
    with torch.no_grad():
        pred = model(query, support, label)["pred"][0, :, 0]  # 2 x 4
    c_part = 1.4 / math.sqrt(1.4 ** 2 + 0.4 ** 2)  # cos(red, red + 0.8 * glob)
    expected_fg = [20 * c_part, 20 * c_part, 0.0, 20 * c_part / math.sqrt(2)]
    expected_bg = [0.0, 0.0, 20.0, 20 / math.sqrt(2)]
    assert torch.allclose(pred[1], torch.tensor(expected_fg), atol=1e-4)
    assert torch.allclose(pred[0], torch.tensor(expected_bg), atol=1e-4)


def test_paper_configuration_size_matches_table5():
    """ResNet-50 dilated to stride 8 is PPNet's only learned part: 23.5 M vs Table 5's 24.7 M (within 10%)."""
    with torch.device("meta"):
        model = build_model("ppnet", num_classes=18, way="1", backbone="resnet50")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - 24.7) / 24.7 < 0.10, params
    assert model.backbone.output_stride == 8 and model.feature_dim == 2048
    assert model.final_activation_dropped and isinstance(model.backbone.body.layer4[-1].act3, nn.Identity)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown PPNet option\(s\) \['parts'\]"):
        build(18, "1", TINY, parts=3)
    with pytest.raises(ValueError, match="1-way only"):
        PPNetConfig(way="k")
    with pytest.raises(ValueError, match="kmeans_init"):
        PPNetConfig(kmeans_init="kmeans++")
    model = tiny()
    q, s, sl, _ = episode()
    sl[0, 50:60, 50:60] = 6
    with pytest.raises(ValueError, match="exactly one foreground class"):
        model(q, s, sl)
