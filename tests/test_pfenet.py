"""PFENet contender (training-free prior, feature enrichment module, frozen backbone, 1-way) on a tiny backbone."""

from __future__ import annotations

import math

import pytest
import torch

from toy import box_of_five_episode

from oshp.models.registry import build_model
from oshp.models.pfenet import PFENet, PFENetConfig, bin_size, build, prior_mask, support_mask_on, weighted_gap
from oshp.models.prototypes import downsample_mask

TINY = "mobilenetv3_small_050"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**kw) -> PFENet:
    torch.manual_seed(0)
    return build(18, "1", TINY, **{"reduce_dim": 16, **kw})


def episode(size: int = 64, batch: int = 2, seed: int = 0):
    return box_of_five_episode(size, batch, seed)


# ---------------------------------------------------------------------------------------------------- prior
def test_prior_mask_by_hand():
    """Query pixels (1,0), (0,1), (1,0.5); support pixels (1,0), (1,1) in the mask and (0,1) outside it."""
    query = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]]).view(1, 2, 1, 3)
    support = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
    # max cosine over the masked support: (0,1) is masked out (a zero vector, cosine 0), so pixel 2 only sees (1,1)
    best = torch.tensor([1.0, 1 / math.sqrt(2), 1.5 / (math.sqrt(2) * math.sqrt(1.25))])
    expected = (best - best.min()) / (best.max() - best.min() + 1e-7)  # min-max over the query image
    prior = prior_mask(query, support, mask)
    assert prior.shape == (1, 1, 1, 3)
    assert torch.allclose(prior.flatten(), expected, atol=1e-5)
    assert prior.flatten()[1].item() == pytest.approx(0.0) and prior.flatten()[0].item() == pytest.approx(1.0)
    # with (0,1) inside the mask, pixel 2 finds a perfect match: the mask matters
    unmasked = prior_mask(query, support, torch.ones(1, 1, 1, 3)).flatten()
    assert unmasked[1].item() == pytest.approx(1.0, abs=1e-5)
    # masked-out support pixels are zero vectors (cosine 0), so a maximum is never below 0: query (-1,0), (1,0),
    # (0,1) against the masked support {(1,0)} + a masked-out (5,5) give maxima 0 (not -1), 1, 0 -> 0, 1, 0
    q2 = torch.tensor([[-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    s2 = torch.tensor([[1.0, 5.0], [0.0, 5.0]]).view(1, 2, 1, 2)
    raw = prior_mask(q2, s2, torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)).flatten()
    assert torch.allclose(raw, torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    # chunking over query pixels changes nothing
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, 5, 6, generator=g), torch.randn(2, 8, 4, 7, generator=g)
    m = (torch.rand(2, 1, 4, 7, generator=g) > 0.5).float()
    assert torch.allclose(prior_mask(a, b, m, chunk=4), prior_mask(a, b, m), atol=1e-6)


def test_weighted_gap_and_bins():
    feats = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).view(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert weighted_gap(feats, mask).item() == pytest.approx(4.0 / 2.0005)
    bins = PFENetConfig().pyramid_bins
    assert [bin_size(b, (60, 60)) for b in bins] == [(60, 60), (30, 30), (15, 15), (8, 8)]  # the release at 473 px
    assert [bin_size(b, (16, 16)) for b in bins] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # 128 px
    assert bin_size(8 / 60, (64, 40)) == (8, 5) and bin_size(3, (64, 40)) == (3, 3)


# ---------------------------------------------------------------------------------------------------- masks
def thin_column(size: int = 64, batch: int = 1) -> torch.Tensor:
    """A B x H x W mask of one 2-pixel column (x = 3, 4) that no stride-8 sample point hits."""
    mask = torch.zeros(batch, size, size)
    mask[:, :, 3:5] = 1.0
    return mask


def test_area_downsampling_keeps_a_thin_class_that_point_sampling_loses():
    mask = thin_column()
    assert downsample_mask(mask, (8, 8), "nearest").sum() == 0  # samples x = 0, 8, 16, ...
    assert downsample_mask(mask, (8, 8), "bilinear").sum() == 0  # aligned corners: x = 0, 9, 18, ...
    area = downsample_mask(mask, (8, 8), "area")
    assert torch.allclose(area[0, :, 0], torch.full((8,), 0.25)) and area[0, :, 1:].sum() == 0
    assert area.sum() * 64 == mask.sum()  # every annotated pixel is accounted for
    assert torch.equal(support_mask_on(mask.unsqueeze(1), (8, 8)), area.unsqueeze(1))
    # on the release's 473 px -> 60 grid the bilinear mode is the release's interpolation
    big = (torch.rand(1, 1, 473, 473) > 0.5).float()
    release = torch.nn.functional.interpolate(big, size=(60, 60), mode="bilinear", align_corners=True)
    assert torch.equal(support_mask_on(big, (60, 60), "bilinear"), release)
    with pytest.raises(ValueError, match="mask_downsample"):
        PFENetConfig(mask_downsample="max")


def test_a_thin_support_part_keeps_its_prior_only_with_area_masks():
    """Support class 2 is a 2-pixel column: the release's bilinear masks lose it on the stride-8 grid (a flat prior,
    an empty prototype); area masks keep it."""
    q, s, _, _ = episode(batch=1)
    label = (thin_column() * 2).long()
    priors = {}
    for mode in ("area", "bilinear"):
        model = tiny(mask_downsample=mode).eval()
        priors[mode] = model(q, s, label)["prior"]
    assert priors["bilinear"].abs().max() == 0
    assert priors["area"].max().item() == pytest.approx(1.0, abs=1e-4) and priors["area"].min() == 0


def test_intermediate_supervision_at_every_scale_with_the_release_weights():
    """PFENet's loss: main CE + aux_weight (1) x the mean of the CE of every FEM scale's classifier."""
    model = tiny().train()
    q, s, sl, ql = episode()
    torch.manual_seed(0)
    out = plain = model(q, s, sl, query_label=ql)
    assert len(model.fem.inner_cls) == len(PFENetConfig().pyramid_bins) == 4
    assert out["loss"].item() == pytest.approx(out["loss_main"].item() + out["loss_aux"].item(), rel=1e-6)
    half = tiny(aux_weight=0.5).train()
    torch.manual_seed(0)
    out = half(q, s, sl, query_label=ql)
    assert out["loss"].item() == pytest.approx(out["loss_main"].item() + 0.5 * out["loss_aux"].item(), rel=1e-6)
    balanced = tiny(class_balanced_loss=True).train()
    torch.manual_seed(0)
    assert balanced(q, s, sl, query_label=ql)["loss"].item() != pytest.approx(plain["loss"].item())


# ---------------------------------------------------------------------------------------------------- backbone
def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics():
    model = tiny()
    model.train()
    assert not model.backbone.training and model.fem.training
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    q, s, sl, ql = episode()
    out = model(q, s, sl, query_label=ql)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.fem.parameters())
    assert model.down_query[0].weight.grad is not None and model.down_supp[0].weight.grad is not None
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, stats[k]), k  # BatchNorm running statistics did not move
    free = tiny(freeze_backbone=False).train()
    free(q, s, sl, query_label=ql)["loss"].backward()
    assert free.backbone.training and any(p.grad is not None for p in free.backbone.parameters())


def test_if_pretrained_freezes_only_a_backbone_that_starts_from_weights(tmp_path):
    scratch = tiny(freeze_backbone="if_pretrained")
    assert not scratch.frozen and all(p.requires_grad for p in scratch.backbone.parameters())
    path = tmp_path / "backbone.pth"
    torch.save(scratch.backbone.state_dict(), path)  # a TimmFeatures state dict (keys body.*)
    loaded = tiny(freeze_backbone="if_pretrained", backbone_weights=str(path))
    assert loaded.frozen and not any(p.requires_grad for p in loaded.backbone.parameters())
    first = next(iter(scratch.backbone.state_dict()))
    assert torch.equal(loaded.backbone.state_dict()[first], scratch.backbone.state_dict()[first])
    assert tiny().frozen  # the default, as PFENet


def test_support_is_masked_before_the_last_stage():
    model = tiny().eval()
    _, s, sl, _ = episode()
    mask = (sl == 5).unsqueeze(1).float()
    hooks = len(model.pre_last_module._forward_hooks)  # timm's own feature hooks, if any
    with torch.no_grad():
        plain = model._levels(s)
        masked = model._levels(s, mask)
        ones = model._levels(s, torch.ones_like(mask))
    assert torch.equal(masked[-2], plain[-2])  # the previous level is returned unmasked
    assert not torch.allclose(masked[-1], plain[-1])  # the last stage saw the masked level
    assert torch.allclose(ones[-1], plain[-1], atol=1e-6)
    assert len(model.pre_last_module._forward_hooks) == hooks  # the masking hook is removed after each call
    assert not any(k.startswith("_pre") for k in model.state_dict())
    off = tiny(mask_support_before_last_stage=False).eval()
    with torch.no_grad():
        assert torch.equal(off._levels(s, mask)[-1], off._levels(s)[-1])


def test_paper_configuration_size():
    """Table 5 gives no PFENet size; PFENet's own paper counts 10.8 M learnable parameters (ResNet-50 frozen)."""
    with torch.device("meta"):
        model = build_model("pfenet", num_classes=18, way="1", backbone="resnet50")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(trainable - 10.8) / 10.8 < 0.10, trainable
    assert total == pytest.approx(trainable + 23.508, abs=0.01)
    assert model.backbone.output_stride == 8 and model.backbone.channels[-3:] == [512, 1024, 2048]


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown PFENet option\(s\) \['bins'\]"):
        build(18, "1", TINY, bins=(1.0,))
    with pytest.raises(ValueError, match="1-way only"):
        PFENetConfig(way="k")
    with pytest.raises(ValueError, match="pyramid_bins"):
        PFENetConfig(pyramid_bins=(1.0, 0.0))
    with pytest.raises(ValueError, match="freeze_backbone"):
        PFENetConfig(freeze_backbone="sometimes")
    model = tiny()
    q, s, sl, _ = episode()
    with pytest.raises(ValueError, match="support_label of shape"):
        model(q, s, sl[:, :32])


def test_needs_three_feature_levels(monkeypatch):
    from oshp.models import pfenet as mod

    original = mod.TimmFeatures
    monkeypatch.setattr(mod, "TimmFeatures", lambda name, **kw: original(name, **{**kw, "out_indices": (3, 4)}))
    with pytest.raises(ValueError, match="at least 3 feature levels"):
        build(18, "1", TINY, reduce_dim=8)
