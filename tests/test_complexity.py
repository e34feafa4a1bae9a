"""Parameter and MAC counting (paper section 6.7, Table 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oshp.profiling.complexity import complexity, count_macs, count_parameters, parameter_summary
from oshp.models.backbone import DeepLabFeatures
from oshp.models.registry import get_method
from oshp.models.eopnet import EOPNet, EOPNetConfig


pytestmark = pytest.mark.usefixtures("single_thread")


def test_count_parameters_excludes_buffers_and_frozen():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    # conv 3*4*9 + 4 = 112, BN 8 (its 9 buffer elements do not count), linear 8 + 2
    assert count_parameters(net) == pytest.approx((112 + 8 + 2) / 1e6)
    assert count_parameters(net, trainable_only=False) == pytest.approx(130 / 1e6)
    summary = parameter_summary(net)
    assert summary["buffers_m"] == pytest.approx(9 / 1e6) and summary["total_m"] == pytest.approx(130 / 1e6)


def test_count_macs_is_flops_over_two():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 16, 16)
    assert count_macs(conv, x) == pytest.approx(8 * 3 * 9 * 16 * 16 / 1e9)
    lin = nn.Linear(10, 5)
    assert count_macs(lin, torch.randn(4, 10)) == pytest.approx(4 * 10 * 5 / 1e9)


def test_paper_configuration_parameter_count_within_4_percent():
    with torch.device("meta"):  # no memory, no init cost, no forward
        model = EOPNet(EOPNetConfig())  # xception65, k-way, every component on
    params = count_parameters(model)
    paper = get_method("eopnet").table5["params_m"]
    assert abs(params - paper) / paper < 0.04
    assert count_parameters(model.backbone.body) == pytest.approx(37.867312, abs=1e-6)  # facts 3.9: Xception-65


def test_xception65_embedding_macs_at_512_on_meta():
    """The embedding network ('mid' level: Xception-65 + fusion) costs 48.08 GMACs per 512 image, as in the release.

    Meta tensors: FlopCounterMode counts from shapes, nothing is computed.
    """
    with torch.device("meta"):
        net = DeepLabFeatures("xception65")
        gmacs = count_macs(net, torch.empty(1, 3, 512, 512))
    assert gmacs == pytest.approx(48.08, abs=0.01)


def test_complexity_tiny_backbone_report():
    r = complexity(image_size=64, ways=3, backbone="mobilenetv3_small_050", num_classes=18, embed_dim=32)
    for key in ("params_m", "gmacs", "image_size", "ways", "counter", "breakdown_gmacs"):
        assert key in r
    assert r["image_size"] == 64 and r["ways"] == 3 and r["gmacs"] > 0
    assert sum(r["breakdown_gmacs"].values()) == pytest.approx(r["gmacs"], rel=1e-6)
    assert "agm" not in r["breakdown_gmacs"] and r["breakdown_gmacs"]["coarse_agm"] > 0  # AGM skipped at eval
    lighter = complexity(image_size=64, ways=3, backbone="mobilenetv3_small_050", embed_dim=32, coarse_at_eval=False,
                         foreground_screening=False)  # the NPM-only path: no coarse head at all
    assert lighter["gmacs"] < r["gmacs"] and "coarse_agm" not in lighter["breakdown_gmacs"]
    assert r["paper"] == get_method("eopnet").table5 and r["method"] == "eopnet"
    with pytest.raises(ValueError, match="unknown method 'nosuchnet'.*eopnet"):
        complexity(method="nosuchnet")
