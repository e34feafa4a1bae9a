"""EOP-Net model, prototypes and backbone (paper section 4), on a tiny CPU backbone and 64 x 64 episodes."""

from __future__ import annotations

import math
import os

import pytest
import timm
import torch

from toy import random_episode

from oshp.models import backbone as backbone_mod
from oshp.models.backbone import DeepLabFeatures, accepts_output_stride
from oshp.models.eopnet import EOPNet, EOPNetConfig, LOW_LOGIT
from oshp.models.heads import NPMHead
from oshp.models.prototypes import (
    PrototypeMemory,
    cosine_similarity_maps,
    downsample_mask,
    masked_average_pooling,
)

TINY = "mobilenetv3_small_050"


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**kw) -> EOPNet:
    torch.manual_seed(0)
    return EOPNet(EOPNetConfig(backbone=TINY, embed_dim=32, **kw))


def episode(seed: int = 0, size: int = 64, batch: int = 2):
    """Random normal images; support has classes 2 and 4 (sample 0) / 2 only (sample 1); query also has 2, 4 and 11."""
    return random_episode(size, batch, seed, normal=True, query_second_class=True)


# ---------------------------------------------------------------------------------------------------- prototypes
def test_masked_average_pooling_by_hand():
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    f[0, 1] = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    w = torch.zeros(1, 3, 2, 2)
    w[0, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # top row: mean (1.5, 5)
    w[0, 1] = torch.tensor([[0.0, 0.0], [0.5, 0.25]])  # weighted: (3*.5+4*.25)/.75 = 10/3, 0
    protos, present = masked_average_pooling(f, w)
    assert torch.allclose(protos[0, 0], torch.tensor([1.5, 5.0]))
    assert torch.allclose(protos[0, 1], torch.tensor([10 / 3, 0.0]))
    assert torch.equal(protos[0, 2], torch.zeros(2)) and present.tolist() == [[True, True, False]]


def test_downsample_area_keeps_tiny_classes_nearest_may_drop_them():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 1, 1] = True  # one pixel inside the first 4 x 4 cell
    area = downsample_mask(mask, (2, 2), "area")
    assert area[0, 0, 0].item() == pytest.approx(1 / 16) and area.sum().item() == pytest.approx(1 / 16)
    assert downsample_mask(mask, (2, 2), "nearest").sum().item() == 0.0
    with pytest.raises(ValueError, match="area"):
        downsample_mask(mask, (2, 2), "bicubic")


def test_cosine_similarity_maps_eq4():
    f = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # 1 x 2 x 1 x 2: pixel vectors (1,0), (0,2)
    p = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # second prototype zero -> cosine 0
    m = cosine_similarity_maps(f, p)
    c = 1 / math.sqrt(2)
    assert torch.allclose(m[0, 0, 0], torch.tensor([c, c]), atol=1e-6)
    assert torch.equal(m[0, 1], torch.zeros(1, 2))


def test_prototype_memory_momentum_by_hand():
    mem = PrototypeMemory(4, 2, alpha=0.1, warmup_epochs=1).train()
    s1 = torch.tensor([[1.0, 0.0]])
    out = mem(s1, [2], epoch=0)  # warm-up: static used, slot overwritten
    assert torch.equal(out, s1) and torch.equal(mem.memory[2], s1[0])
    assert mem.initialised.tolist() == [False, False, True, False] and mem.num_updates[2].item() == 0
    s2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    out = mem(s2, [2], epoch=1)  # eq. 3: 0.9 * (1, 0) + 0.1 * (0, 1)
    assert torch.allclose(out, torch.tensor([[0.9, 0.1]])) and torch.allclose(mem.memory[2], torch.tensor([0.9, 0.1]))
    out.sum().backward()
    assert torch.allclose(s2.grad, torch.full((1, 2), 0.1))  # gradient only through alpha * p
    # sequential per sample: the second pair of class 2 sees the slot updated by the first
    out = mem(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), [2, 2], epoch=5)
    assert torch.allclose(out[0], torch.tensor([0.81, 0.19]))
    assert torch.allclose(out[1], torch.tensor([0.729, 0.271]))
    assert mem.num_updates[2].item() == 3
    # a class first seen after warm-up is initialised with its static prototype
    out = mem(torch.tensor([[3.0, 4.0]]), [1], epoch=5)
    assert torch.equal(out[0], torch.tensor([3.0, 4.0])) and mem.num_updates[1].item() == 0


def test_prototype_memory_default_alpha_and_warmup_overwrites():
    mem = PrototypeMemory(3, 1).train()  # paper: alpha 0.001, 3 warm-up epochs
    assert mem.alpha == 0.001 and mem.warmup_epochs == 3
    for epoch, value in [(0, 5.0), (1, 7.0), (2, 2.0)]:
        mem(torch.tensor([[value]]), [1], epoch=epoch)
        assert mem.memory[1].item() == value  # overwritten, not averaged, during warm-up
    out = mem(torch.tensor([[1002.0]]), [1], epoch=3)
    assert out.item() == pytest.approx(0.999 * 2.0 + 0.001 * 1002.0)


def test_prototype_memory_running_mean_warmup():
    mem = PrototypeMemory(3, 1, warmup="running-mean").train()
    for epoch, value in [(0, 5.0), (1, 7.0), (2, 3.0)]:
        assert mem(torch.tensor([[value]]), [1], epoch=epoch).item() == value  # the static prototype is used
    assert mem.memory[1].item() == pytest.approx(5.0) and mem.warmup_count[1].item() == 3  # mean of 5, 7, 3
    out = mem(torch.tensor([[1005.0]]), [1], epoch=3)
    assert out.item() == pytest.approx(0.999 * 5.0 + 0.001 * 1005.0) and mem.warmup_count[1].item() == 3
    assert "warmup_count" in mem.state_dict()  # resumed runs keep their means
    assert "warmup_count" not in PrototypeMemory(3, 1).state_dict()  # the paper's memory keeps its keys


def test_mid_epoch_weight_shift_trains_npm_in_every_epoch():
    paper, mid = tiny(), tiny(weight_shift="mid-epoch")
    assert [paper._beta(e, 2) for e in range(2)] == [1.0, 0.5]  # no NPM weight in epoch 0
    assert [mid._beta(e, 2) for e in range(2)] == [0.75, 0.25]
    assert mid._beta(0, 1) == 0.5  # a one-epoch run trains NPM too


def test_prototype_memory_eval_modes():
    mem = PrototypeMemory(4, 2, alpha=0.1, warmup_epochs=0).train()
    mem(torch.tensor([[1.0, 0.0]]), [1], epoch=0)  # initialise
    mem(torch.tensor([[1.0, 0.0]]), [1], epoch=0)  # one momentum step: slot 1 has a dynamic prototype
    before = mem.memory.clone()
    support = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mem.eval()
    out = mem(support, [1, 3], epoch=0)  # base class 1: (1 - a) memory + a support; novel class 3: static
    assert torch.allclose(out[0], torch.tensor([0.9, 0.1])) and torch.equal(out[1], support[1])
    assert torch.equal(mem.memory, before)  # eval never writes
    mem.test_prototypes = "static"
    assert torch.equal(mem(support, [1, 3]), support)
    assert set(mem.state_dict()) == {"memory", "initialised", "num_updates"}


_DDP_WORKER = r"""
import os, sys, torch, torch.distributed as dist
from oshp.models.prototypes import PrototypeMemory
rank, world, init_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
mem = PrototypeMemory(4, 2, alpha=0.5, warmup_epochs=0).train()
with torch.no_grad():
    mem.memory[1] = torch.tensor([1.0, 1.0]); mem.initialised[1] = True; mem.num_updates[1] = 1
# rank 0 moves slot 1 towards (3, 3) and initialises slot 2; rank 1 moves slot 1 towards (5, 5)
if rank == 0:
    mem(torch.tensor([[3.0, 3.0], [4.0, 0.0]]), [1, 2], epoch=1)
else:
    mem(torch.tensor([[5.0, 5.0]]), [1], epoch=1)
mem.sync()
torch.save(mem.state_dict(), os.path.join(out_dir, "rank%d.pt" % rank))
dist.destroy_process_group()
"""


def test_prototype_memory_sync_across_ranks(tmp_path):
    """Two gloo ranks in subprocesses (only torch + oshp.models.prototypes are imported there)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), "2", str(tmp_path / "init"), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # slot 1: mean of (2, 2) and (3, 3); slot 2: only rank 0 touched it, so it is not diluted
    assert torch.allclose(r0["memory"][1], torch.tensor([2.5, 2.5]))
    assert torch.allclose(r0["memory"][2], torch.tensor([4.0, 0.0]))
    assert r0["initialised"].tolist() == [False, True, True, False]
    assert r0["num_updates"].tolist() == [0, 2, 0, 0]


def test_npm_background_map_on_hand_made_similarities():
    npm = NPMHead(scale_init=10.0)
    sims = torch.tensor([[[0.2, 0.8]], [[0.6, -0.4]], [[0.5, 0.5]]])  # P=3 maps of 1 x 2; pairs 0, 1 -> sample 0
    group = torch.tensor([0, 0, 1])
    m_bg = npm.background_similarity(sims, group, 2)  # eq. 8 with omega = identity at init
    expected0 = ((1 - sims[0]) + (1 - sims[1])) / 2
    assert torch.allclose(m_bg[0], expected0) and torch.allclose(m_bg[1], 1 - sims[2])
    fg, bg = npm(sims, group, 2)
    assert torch.allclose(fg, 10 * sims) and torch.allclose(bg, 10 * m_bg)


def test_agm_not_executed_at_eval():
    model = tiny(foreground_screening=False)
    calls = []
    model.agm.register_forward_hook(lambda *a: calls.append(1))
    q, s, sl, ql = episode()
    model.train()(q, s, sl, query_label=ql, epoch=1, max_epoch=4)
    assert len(calls) == 1
    model.eval()
    with torch.no_grad():
        out = model(q, s, sl)
    assert len(calls) == 1 and "agm" not in out and out["pred"] is out["npm"] and out["beta"] == 0.0
    model.config.eval_agm = True
    with torch.no_grad():
        assert "agm" in model(q, s, sl)
    assert len(calls) == 2


def test_agm_runs_only_over_support_classes():
    model = tiny()
    seen = []
    model.agm.trunk.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    q, s, sl, ql = episode()
    model.train()(q, s, sl, query_label=ql, epoch=1, max_epoch=4)
    assert seen == [3]  # 2 classes in sample 0 + 1 in sample 1, not 17 ids per sample


def test_logits_restricted_to_support_classes():
    model = tiny().eval()
    q, s, sl, _ = episode()
    with torch.no_grad():
        out = model(q, s, sl)
    pred = out["pred"]
    absent0 = [c for c in range(18) if c not in (0, 2, 4)]
    assert torch.all(pred[0, absent0] == LOW_LOGIT) and torch.all(pred[1, [c for c in range(18) if c not in (0, 2)]]
                                                                  == LOW_LOGIT)
    labels = pred.argmax(1)
    assert set(labels[0].unique().tolist()) <= {0, 2, 4} and set(labels[1].unique().tolist()) <= {0, 2}
    free = tiny(restrict_to_support=False).eval()
    with torch.no_grad():
        p = free(q, s, sl)["pred"]
    assert torch.all(p[0, 5] == p[0, 5, 0, 0]) and p[0, 5, 0, 0] > LOW_LOGIT  # a finite constant, as in the release


def test_query_gt_restricted_to_support_classes():
    model = tiny()
    _, _, _, ql = episode()
    restricted = model.restrict_query_label(ql, [[2, 4], [2]])
    assert set(restricted[0].unique().tolist()) == {0, 2, 4, 255}  # 11 (not in support) -> background
    assert set(restricted[1].unique().tolist()) == {0, 2, 255}  # 4 is not in sample 1's support
    one = tiny(way="1").restrict_query_label(ql, [[2], [2]])
    assert set(one.unique().tolist()) == {0, 1, 255}


def test_warmup_then_momentum_in_the_model():
    model = tiny(warmup_epochs=2)
    model.config.alpha = model.fine_memory.alpha = 0.25
    captured = []
    model.fine_memory.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().clone()))
    model.train()
    q, s, sl, ql = episode(0)
    for epoch, seed in [(0, 0), (1, 1)]:  # warm-up: slot overwritten with the latest static prototype
        q, s, sl, ql = episode(seed)
        model(q, s, sl, query_label=ql, epoch=epoch, max_epoch=4)
        static = captured[-1]  # pairs: (0, 2), (0, 4), (1, 2): slot 2 ends with sample 1's prototype
        assert torch.allclose(model.fine_memory.memory[2], static[2]) and torch.allclose(
            model.fine_memory.memory[4], static[1])
    assert model.fine_memory.num_updates.sum().item() == 0
    mem2 = model.fine_memory.memory[2].clone()
    q, s, sl, ql = episode(2)
    model(q, s, sl, query_label=ql, epoch=2, max_epoch=4)
    static = captured[-1]
    a = 0.25
    step1 = (1 - a) * mem2 + a * static[0]  # sample 0, then sample 1 (fixed order)
    assert torch.allclose(model.fine_memory.memory[2], (1 - a) * step1 + a * static[2], atol=1e-6)
    assert model.fine_memory.num_updates[2].item() == 2 and model.fine_memory.num_updates[4].item() == 1
    frozen = tiny(dynamic_prototypes=False).train()
    frozen(q, s, sl, query_label=ql, epoch=5, max_epoch=8)
    assert not frozen.fine_memory.initialised.any()


def test_bad_inputs_give_clear_errors():
    model = tiny().eval()
    q, s, sl, ql = episode()
    empty = sl.clone()
    empty[1] = torch.where(empty[1] == 255, empty[1], torch.zeros_like(empty[1]))
    with pytest.raises(ValueError, match="support mask has no foreground pixels: annotate at least one class"):
        model(q, s, empty)
    with pytest.raises(ValueError, match=r"\(2, 48, 64\).*\(2, 3, 64, 64\)"):
        model(q, s, sl[:, :48])
    with pytest.raises(ValueError, match="integer tensor.*float32"):
        model(q, s, sl.float())
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        model(q.to(torch.uint8), s, sl)
    with pytest.raises(ValueError, match="outside 0..17"):
        model(q, s, torch.full_like(sl, 20))
    with pytest.raises(ValueError, match="query_label of shape"):
        model.train()(q, s, sl, query_label=ql[:, :32])
    with pytest.raises(ValueError, match="exactly one foreground class"):
        tiny(way="1")(q, s, sl)
    with pytest.raises(ValueError, match="use_agm"):
        EOPNetConfig(use_agm=False, use_npm=False)


def test_state_dict_round_trip_keeps_prototype_memory(tmp_path):
    model = tiny(warmup_epochs=0)
    q, s, sl, ql = episode()
    model.train()
    for epoch in range(2):
        model(q, s, sl, query_label=ql, epoch=epoch, max_epoch=2)
    assert model.fine_memory.num_updates[2].item() > 0
    path = tmp_path / "eop.pt"
    torch.save(model.state_dict(), path)
    other = tiny(warmup_epochs=0)
    other.load_state_dict(torch.load(path))
    for name in ("memory", "initialised", "num_updates"):
        assert torch.equal(getattr(model.fine_memory, name), getattr(other.fine_memory, name))
        assert torch.equal(getattr(model.coarse_memory, name), getattr(other.coarse_memory, name))
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.allclose(model(q, s, sl)["pred"], other(q, s, sl)["pred"])


def test_screening_is_on_by_default_where_the_coarse_space_exists():
    assert EOPNetConfig().screens and not EOPNetConfig(foreground_screening=False).screens
    assert not EOPNetConfig.ablation("DML+WS").screens  # no coarse head, nothing to screen with
    model = tiny().eval()
    q, s, sl, _ = episode()
    with torch.no_grad():
        out = model(q, s, sl)
    background = out["coarse"].argmax(1) == 0
    assert bool(background.any()) and torch.all(out["pred"].argmax(1)[background] == 0)
    with pytest.raises(ValueError, match="coarse space"):
        EOPNetConfig(multi_task=False, foreground_screening=True)


def test_foreground_screening_and_release_preset():
    cfg = EOPNetConfig.release_compat(backbone=TINY, embed_dim=32)
    assert cfg.warmup_epochs == 26 and cfg.foreground_screening and cfg.test_prototypes == "memory"
    model = EOPNet(cfg).eval()
    q, s, sl, _ = episode()
    with torch.no_grad():
        out = model(q, s, sl)
    screened = out["coarse"].argmax(1) == 0
    assert torch.all(out["pred"].argmax(1)[screened] == 0)
    assert EOPNetConfig.ablation("DML+WS").multi_task is False and EOPNetConfig.ablation("AGM").use_npm is False


def test_agm_only_row_predicts_with_agm_at_eval():
    torch.manual_seed(0)
    model = EOPNet(EOPNetConfig.ablation("AGM", backbone=TINY, embed_dim=32)).eval()
    q, s, sl, _ = episode()
    with torch.no_grad():
        out = model(q, s, sl)
    assert "npm" not in out and out["pred"] is out["agm"] and "coarse" not in out


# ---------------------------------------------------------------------------------------------------- backbone
def test_backbone_picks_stride4_and_deepest_features():
    net = DeepLabFeatures(TINY)
    assert net.low_reduction == 4 and net.high_reduction == 16 and net.output_stride == 16
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 256, 16, 16)
    assert accepts_output_stride("resnet18", 16) and not accepts_output_stride("vit_tiny_patch16_224", 16)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        DeepLabFeatures("not_a_model_xyz")


def test_pretrained_fetch_failure_is_clear(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' (simulated)")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(backbone_mod.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"could not be fetched.*network access.*weights="):
        DeepLabFeatures(TINY, pretrained=True)


def test_local_backbone_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth.*weights="):
        DeepLabFeatures(TINY, weights=tmp_path / "nope.pth")
    torch.manual_seed(1)
    cls_model = timm.create_model(TINY, pretrained=False)  # a timm classification checkpoint
    torch.save(cls_model.state_dict(), tmp_path / "timm.pth")
    net = DeepLabFeatures(TINY, weights=tmp_path / "timm.pth")
    assert torch.equal(net.body.state_dict()["conv_stem.weight"], cls_model.state_dict()["conv_stem.weight"])
    torch.save({"state_dict": net.state_dict()}, tmp_path / "own.pth")  # our own format, wrapped
    again = DeepLabFeatures(TINY, weights=tmp_path / "own.pth")
    assert torch.equal(again.high_proj[0].weight, net.high_proj[0].weight)
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit backbone"):
        DeepLabFeatures(TINY, weights=tmp_path / "bad.pth")


def test_release_contrastive_form_adds_a_background_row_and_the_unrestricted_query_rows():
    """contrastive_form='release': slots [background over the non-human mask, query and support classes], the query
    rows taken before the restriction to the support's classes (class 11 here) and scoring 0 where the support lacks
    them."""
    from oshp.losses import prototype_contrastive_loss

    model = tiny(contrastive_form="release").train()
    for module in model.modules():  # batch statistics would make the backbone depend on the batch
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    q, s, sl, ql = (t[:1] for t in episode())
    human_q, human_s = (ql != 0).long(), (sl != 0).long()
    out = model(q, s, sl, support_human=human_s, query_label=ql, query_human=human_q, epoch=0, max_epoch=3)
    with torch.no_grad():
        hq, hs = model.fine_proj(model.backbone(q)), model.fine_proj(model.backbone(s))
        size = hq.shape[-2:]
        slots = sorted({c for c in ql.unique().tolist() + sl.unique().tolist() if c not in (0, 255)})
        assert 11 in slots and 11 not in sl.unique().tolist()

        def prototypes(feats, label, human):
            masks = torch.stack([human[0] == 0] + [label[0] == c for c in slots]).unsqueeze(0)
            weights = torch.nn.functional.adaptive_avg_pool2d(masks.float(), size)
            return masked_average_pooling(feats, weights)

        qp, qm = prototypes(hq, ql, human_q)
        sp, sm = prototypes(hs, sl, human_s)
        expected = prototype_contrastive_loss(qp, sp, qm, sm, model.config.tau, absent_rows="zero")
    assert out["loss_nca"].item() == pytest.approx(expected.item(), rel=1e-4)
    paper = tiny(contrastive_form="paper").train()
    paper.load_state_dict(model.state_dict())
    for module in paper.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    other = paper(q, s, sl, support_human=human_s, query_label=ql, query_human=human_q, epoch=0, max_epoch=3)
    assert other["loss_nca"].item() != pytest.approx(out["loss_nca"].item(), rel=1e-3)


@pytest.mark.parametrize("option, value", [("agm_trunk", "dense"), ("mask_downsample", "bilinear"),
                                           ("test_prototypes", "dynamic"), ("weight_shift", "per-step"),
                                           ("memory_warmup", "ema"), ("contrastive_form", "both"),
                                           ("residual_input", "relu"), ("low_level_tap", "after"),
                                           ("background_mean", "all"), ("agm_absent", "zero")])
def test_config_refuses_unknown_choices(option, value):
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        EOPNetConfig(**{option: value})
    with pytest.raises(ValueError, match="all-ids"):
        EOPNetConfig(way="1", background_mean="all-ids")
