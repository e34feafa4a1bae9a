"""POPNet contender (He et al., AAAI 2021; EOP-Net section 6.3): stage 1 -> KIM -> stage 3, trained progressively."""

from __future__ import annotations

import math

import pytest
import torch

from toy import random_episode

from oshp.models.registry import build_model, get_method
from oshp.models.episode import LOW_LOGIT
from oshp.core.errors import ScheduleError
from oshp.models.popnet import (KnowledgeInfusion, POPNet, POPNetConfig, build, check_stage_weights,
                                  stage_ncm_weights, stage_plan)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = "mobilenetv3_small_050"


def tiny(**kw) -> POPNet:
    torch.manual_seed(0)
    return POPNet(POPNetConfig(backbone=TINY, embed_dim=kw.pop("embed_dim", 16), **kw))


def episode(seed: int = 0, size: int = 64, batch: int = 2):
    """Random images; support classes 2 and 4 (sample 0) / 2 (sample 1); the query also shows 11."""
    return random_episode(size, batch, seed)


def test_stage_plan_by_hand():
    # 10 epochs, half each: stage 1 trains epochs 0-4 with its own (e, E) = (e, 5); stage 3 epochs 5-9 as (e-5, 5)
    p = stage_plan(3, 10)
    assert (p.train_coarse, p.train_fine, p.coarse_epoch, p.coarse_epochs) == (True, False, 3, 5)
    p = stage_plan(7, 10)
    assert (p.train_coarse, p.train_fine, p.fine_epoch, p.fine_epochs, p.infuse_gradients) == (False, True, 2, 5, False)
    assert stage_plan(2, 10, stage1_share=0.3).train_fine is False and stage_plan(3, 10, stage1_share=0.3).train_fine
    assert stage_plan(2, 4, stage1_share=0.99).train_coarse and stage_plan(3, 4, stage1_share=0.99).train_fine
    one = stage_plan(0, 1)  # a 1-epoch run cannot be split: both stages, still separate
    assert one.train_coarse and one.train_fine and not one.infuse_gradients
    joint = stage_plan(6, 10, "joint")
    assert joint.train_coarse and joint.train_fine and joint.infuse_gradients and joint.fine_epoch == 6


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 100])
@pytest.mark.parametrize("schedule", ["progressive", "joint"])
def test_every_stage_weights_its_ncm_at_any_budget(epochs, schedule):
    """Default weight shift (mid-epoch): each stage's NCM gets a positive weight in every epoch it trains."""
    weights = stage_ncm_weights(epochs, schedule)
    assert all(w and all(0 < x < 1 for x in w) for w in weights.values()), weights
    check_stage_weights(epochs, schedule)


def test_weight_shift_by_hand():
    # 3 epochs: stage 1 trains epochs 0-1 (E = 2), stage 3 epoch 2 alone (E = 1)
    assert stage_ncm_weights(3) == {"stage 1": [0.25, 0.75], "stage 3": [0.5]}
    assert stage_ncm_weights(2) == {"stage 1": [0.5], "stage 3": [0.5]}  # one epoch each
    assert stage_ncm_weights(1) == {"stage 1": [0.5], "stage 3": [0.5]}  # both stages in the one epoch
    assert stage_ncm_weights(1, weight_shifting=False) == {"stage 1": [0.5], "stage 3": [0.5]}
    # the release's beta = 1 - e/E: NCM weight 0 in a stage's first epoch; fine at the paper's 100 epochs
    assert stage_ncm_weights(4, weight_shift="release") == {"stage 1": [0.0, 0.5], "stage 3": [0.0, 0.5]}
    release = stage_ncm_weights(100, weight_shift="release")
    assert release["stage 1"][:2] == pytest.approx([0.0, 0.02]) and release["stage 3"][-1] == pytest.approx(0.98)
    check_stage_weights(100, weight_shift="release")
    mid = stage_ncm_weights(100)  # within 0.5/E of the release's
    assert all(abs(a - b) <= 0.5 / 50 + 1e-12 for s in mid for a, b in zip(mid[s], release[s]))


@pytest.mark.parametrize("epochs,untrained", [(1, "stage 1 and stage 3"), (2, "stage 1 and stage 3"),
                                              (3, "stage 3")])
def test_a_stage_whose_ncm_never_trains_is_an_error(epochs, untrained):
    with pytest.raises(ScheduleError, match=rf"never train the NCM .* of {untrained}: .* train for 4 epochs or more, "
                                            r"or use weight_shift='mid-epoch'"):
        check_stage_weights(epochs, weight_shift="release")
    model = tiny(weight_shift="release").train()
    q, s, sl, ql = episode()
    with pytest.raises(ScheduleError, match="never train the NCM"):  # at the first step, before any update
        model(q, s, sl, query_label=ql, epoch=0, max_epoch=epochs)
    model.eval()(q, s, sl, epoch=0, max_epoch=epochs)  # inference does not depend on the schedule
    with pytest.raises(ValueError, match="weight_shift must be one of"):
        POPNetConfig(weight_shift="per-step")


def _grads(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_progressive_schedule_gradients_and_frozen_stage1():
    model = tiny().train()
    q, s, sl, ql = episode()
    out = model(q, s, sl, query_label=ql, epoch=1, max_epoch=4)  # stage-1 phase, beta = 0.25: AGM and NCM
    out["loss"].backward()
    g1 = _grads(model.stage1)
    assert not _grads(model.stage3)
    for prefix in ("backbone.", "proj.", "agm.", "ncm."):
        assert any(n.startswith(prefix) for n in g1), prefix
    assert model.stage1.memory.initialised[1] and not model.stage3.memory.initialised.any()

    model.zero_grad(set_to_none=True)
    bn = model.stage1.backbone.fuse[1]
    stats = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    memory = model.stage1.memory.memory.clone()
    out = model(q, s, sl, query_label=ql, epoch=3, max_epoch=4)  # stage-3 phase: stage 1 frozen
    out["loss"].backward()
    assert not _grads(model.stage1) and "loss_coarse" not in out
    g3 = _grads(model.stage3)
    for prefix in ("backbone.", "kim.", "proj.", "agm.", "ncm."):
        assert any(n.startswith(prefix) for n in g3), prefix
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked, stats[1])
    assert torch.equal(model.stage1.memory.memory, memory) and model.stage1.training  # mode restored

    joint = tiny(schedule="joint", lambda_coarse=0.0).train()
    out = joint(q, s, sl, query_label=ql, epoch=3, max_epoch=4)
    assert out["stages"] == ("coarse", "fine")
    out["loss"].backward()  # stage 1's own loss weighs 0: its backbone learns from the fine loss through the KIM
    assert any(n.startswith("backbone.") for n in _grads(joint.stage1)) and _grads(joint.stage3)


def test_kim_shapes_and_stage3_depends_on_stage1_features():
    kim = KnowledgeInfusion(3, 5)
    assert kim(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8)).shape == (2, 5, 8, 8)  # previous map resized
    assert sum(p.numel() for p in KnowledgeInfusion(256, 256).parameters()) == 206_080  # facts 3.8: 0.206 M
    with pytest.raises(ValueError, match="3 previous-stage and 5 current"):
        kim(torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8))

    model = tiny().eval()
    q, s, sl, _ = episode()
    with torch.no_grad():
        coarse = model.coarse_stage(q, s, sl > 0)
        pq, ps = coarse["query_features"], coarse["support_features"]
        assert pq.shape == (2, 16, 16, 16) and ps.shape == (2, 16, 16, 16)
        base = model.fine_stage(q, s, sl, pq, ps)["ncm"]
        again = model.fine_stage(q, s, sl, pq.clone(), ps.clone())["ncm"]
        changed = model.fine_stage(q, s, sl, pq + torch.randn_like(pq), ps)["ncm"]
        full = model(q, s, sl)["pred"]
    assert torch.allclose(base, again) and torch.allclose(base, full, atol=1e-5)
    assert (changed[:, [0, 2]] - base[:, [0, 2]]).abs().max() > 1e-3  # other stage-1 features, other stage-3 logits
    with pytest.raises(ValueError, match="previous stage"):
        model.stage3(q)


def test_nearest_centroid_logits_by_hand():
    model = tiny(embed_dim=2).eval()
    hs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # support pixels (1, 0) and (0, 1)
    support_label = torch.tensor([[[2, 5]]])  # -> prototypes p2 = (1, 0), p5 = (0, 1)
    hq = torch.tensor([[[[1.0, 2.0, 0.0]], [[0.0, 1.0, 3.0]]]])  # query pixels (1, 0), (2, 1), (0, 3)
    r5 = 1 / math.sqrt(5)
    cos2, cos5 = torch.tensor([1.0, 2 * r5, 0.0]), torch.tensor([0.0, r5, 1.0])
    with torch.no_grad():
        logits = model.fine_head(hq, hs, support_label, (1, 3))["ncm"][0, :, 0]
    # NCM at initialisation: scale 10, identity scalar maps; background = mean over classes of (1 - cos)
    assert torch.allclose(logits[2], 10 * cos2, atol=1e-5) and torch.allclose(logits[5], 10 * cos5, atol=1e-5)
    assert torch.allclose(logits[0], 10 * ((1 - cos2) + (1 - cos5)) / 2, atol=1e-5)  # 5, 3.292, 5
    assert torch.all(logits[[1, 3, 4] + list(range(6, 18))] == LOW_LOGIT)
    assert logits.argmax(0).tolist() == [2, 2, 5]
    with torch.no_grad():  # the scalar convs and the scale are the NCM's parameters
        model.stage3.ncm.scale.fill_(5.0)
        model.stage3.ncm.phi.weight.fill_(2.0)
        model.stage3.ncm.phi.bias.fill_(-1.0)
        logits = model.fine_head(hq, hs, support_label, (1, 3))["ncm"][0, :, 0]
    assert torch.allclose(logits[2], 5 * (2 * cos2 - 1), atol=1e-5)
    # stage 1: one human prototype from the human mask (pixel 0 only) -> [background, human] = 10 (1 - cos), 10 cos
    with torch.no_grad():
        coarse = tiny(embed_dim=2).eval().coarse_head(hq, hs, torch.tensor([[[True, False]]]), (1, 3))["ncm"]
    assert torch.allclose(coarse[0, :, 0], torch.stack([10 * (1 - cos2), 10 * cos2]), atol=1e-5)


def test_paper_configuration_size():
    with torch.device("meta"):
        model = build_model("popnet", num_classes=18, way="k", backbone=get_method("popnet").paper_backbone)
    params = sum(p.numel() for p in model.parameters()) / 1e6  # two stage networks + KIM, every parameter
    assert params == pytest.approx(get_method("popnet").table5["params_m"], rel=0.10)  # 79.8 M vs 85.8 M


def test_bad_options_and_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown POPNet option\(s\) \['stage_one'\]"):
        build(18, "k", TINY, stage_one=0.5)
    with pytest.raises(ValueError, match="stage1_epochs.*between 0 and 1"):
        POPNetConfig(stage1_epochs=1.0)
    with pytest.raises(ValueError, match="schedule must be"):
        POPNetConfig(schedule="end-to-end")
    model = tiny().eval()
    q, s, sl, _ = episode()
    with pytest.raises(ValueError, match="exactly one foreground class"):
        tiny(way="1")(q, s, sl)
    with pytest.raises(ValueError, match="support mask has no foreground"):
        model(q, s, torch.zeros_like(sl))
