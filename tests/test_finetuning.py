"""Fine-Tuning contender (EOP-Net paper section 6.3): supervised pre-training, per-pair fine-tuning of the last two
conv layers and the classifier on copies, on hand-made tensors and a tiny CPU backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toy import random_episode

from oshp.models.registry import build_model
from oshp.models import finetuning as ft

TINY = "mobilenetv3_small_050"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(way: str = "k", **options) -> ft.FineTuning:
    torch.manual_seed(0)
    options = {"head_dim": 16, "finetune_steps": 8, "finetune_lr": 1e-3, **options}
    return ft.build(num_classes=18, way=way, backbone=TINY, **options)


def episode(size: int = 64, batch: int = 2, way: str = "k"):
    return random_episode(size, batch, second_class=way == "k")


def pretrained(way: str = "k", steps: int = 3, **options) -> ft.FineTuning:
    """A tiny model after a few supervised steps (so that its rows of 0, 2 and 4 count as learned), on both labels."""
    model = tiny(way, **{"support_loss_weight": 1.0, **options}).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    q, s, sl, ql = episode(way=way)
    for _ in range(steps):
        loss = model(q, s, sl, query_label=ql)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- mechanism
def test_eval_finetunes_copies_only_and_the_support_loss_falls(monkeypatch):
    model = pretrained(finetune_steps=10, finetune_lr=3e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN statistics included
    seen = []
    real = ft.finetune_head

    def spy(head, weight, bias, *args, **kwargs):
        start = ([p.detach().clone() for p in head.parameters()], weight.detach().clone())
        losses = real(head, weight, bias, *args, **kwargs)
        seen.append((start, head, weight, losses))
        return losses

    monkeypatch.setattr(ft, "finetune_head", spy)
    q, s, sl, _ = episode()
    with torch.no_grad():  # as evaluate_episodes calls it
        out = model(q, F.interpolate(s, size=(48, 56)), sl[:, :48, :56])
    assert len(seen) == 2  # one fine-tuning per pair of the batch
    for (head0, weight0), head, weight, losses in seen:
        assert all(p is not q_ for p in head.parameters() for q_ in model.parameters())  # copies
        assert all(not torch.equal(a, b) for a, b in zip(head0, head.parameters()))  # both conv layers moved
        assert not torch.equal(weight0, weight)  # the classifier rows moved
        # the support loss falls over the test-time iterations
        assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
    assert torch.allclose(out["finetune_loss"], torch.tensor([s[3] for s in seen]))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in state.items()), "the model's own weights changed"
    assert all(p.grad is None for p in model.parameters())  # nothing was back-propagated into the model itself
    # the next pair starts from the pre-trained weights again: same inputs, same output (deterministic)
    with torch.no_grad():
        again = model(q, F.interpolate(s, size=(48, 56)), sl[:, :48, :56])
    assert torch.equal(out["pred"], again["pred"])


def test_novel_rows_imprinted_from_the_support_by_hand():
    model = tiny(head_dim=2, novel_init="imprint")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # learned, norm 5
        model.classifier.weight[2, :, 0, 0] = torch.tensor([0.0, 1.0])  # learned, norm 1
        model.classifier.weight[5, :, 0, 0] = torch.tensor([9.0, 9.0])  # never learned
        model.classifier.bias.copy_(torch.arange(18.0))
    model.learned.zero_()
    model.learned[[0, 2]] = True
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, 0, 0] = torch.tensor([2.0, 0.0])
    feats[0, :, 0, 1] = torch.tensor([0.0, 4.0])
    label = torch.zeros(4, 4, dtype=torch.long)
    label[:2, :] = 5  # the top row of feature cells
    weight, bias = model._initial_rows(nn.Identity(), feats, label, [0, 2, 5])
    assert torch.equal(weight[:2], torch.tensor([[3.0, 4.0], [0.0, 1.0]])) and torch.equal(bias[:2],
                                                                                         torch.tensor([0.0, 2.0]))
    # novel row: the masked mean (1, 2) normalised, times the mean learned norm (5 + 1) / 2 = 3; bias (0 + 2) / 2
    assert torch.allclose(weight[2], torch.tensor([1.0, 2.0]) / math.sqrt(5) * 3)
    assert bias[2].item() == pytest.approx(1.0)
    model.config.novel_init = "zero"
    weight, bias = model._initial_rows(nn.Identity(), feats, label, [0, 2, 5])
    assert torch.equal(weight[2], torch.zeros(2)) and bias[2].item() == 0.0


def test_local_target_maps_rows_and_ignores_the_rest():
    label = torch.tensor([[0, 4, 2], [255, 7, 4]])
    assert ft.local_target(label, [0, 2, 4]).tolist() == [[0, 2, 1], [255, 255, 2]]


def test_training_touches_the_whole_parser_and_marks_learned_rows():
    q, s, sl, ql = episode()
    sl[0, 0:8, 40:60] = 7  # a base class of the support's parse that the query label does not hold
    model = tiny()
    out = model.train()(q, s, sl, query_label=ql)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert model.learned.nonzero().flatten().tolist() == [0, 2, 4, 7]
    # the default target is the query label alone (the rule of every method): no support term
    assert out["loss_support"].item() == 0 and out["loss"].item() == out["loss_query"].item()
    both = tiny(support_loss_weight=1.0)
    out = both.train()(q, s, sl, query_label=ql)
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(out["loss_query"].item() + out["loss_support"].item())
    # k-way support CE covers every row (the support is a complete base parse): row 9, in no label, gets a gradient
    assert both.classifier.weight.grad[9].abs().sum() > 0 and model.classifier.weight.grad[9].abs().sum() == 0


def test_paper_configuration_on_the_meta_device():
    with torch.device("meta"):
        model = build_model("finetuning", num_classes=18, way="k", backbone="xception65")
    head = sum(p.numel() for p in model.head.parameters()) + sum(p.numel() for p in model.classifier.parameters())
    # two 3x3 conv 256 -> 256 (no bias) + BN, and a 1x1 classifier 256 -> 18 with bias
    assert head == 2 * (256 * 256 * 9 + 2 * 256) + 256 * 18 + 18


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match=r"unknown Fine-Tuning option\(s\) \['steps'\]"):
        tiny(steps=3)
    with pytest.raises(ValueError, match="finetune_optimizer"):
        tiny(finetune_optimizer="lbfgs")
    with pytest.raises(ValueError, match="novel_init"):
        tiny(novel_init="random")
    q, s, sl, _ = episode()
    with pytest.raises(ValueError, match="exactly one foreground class"):
        tiny("1").eval()(q, s, sl)
