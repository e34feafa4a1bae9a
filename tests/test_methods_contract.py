"""The contract every registered method keeps, in every way it runs: written once, parametrised over the registry.

Per-model test files keep only what is special to their model (equations on tiny hand-made tensors, their paper
configuration); what every method must do is here: the output contract, clear errors for bad input, learning one
episode, training the head it predicts with, and a smoke training and evaluation through the run folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oshp.core.errors import UnknownOptionError
from oshp.engine.config import make_config
from oshp.engine.evaluate import evaluate_episodes, evaluate_run
from oshp.engine.run import model_from_config
from oshp.engine.train import Trainer, train
from oshp.data.episodes import MetaTestEpisodes
from oshp.data.pairs import default_test_pairs
from oshp.models.episode import LOW_LOGIT
from oshp.models.registry import METHODS
from toy import box_episode, flat_episode, overfit

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = [pytest.param(name, way, id=f"{name}-{way}way") for name, m in sorted(METHODS.items()) for way in m.ways]
NUM_CLASSES = 18

OVERFIT = {  # what a method needs to learn one toy episode: its step size and length, the epoch it trains in
    "eopnet": dict(lr=1e-3, steps=120, epoch=1, max_epoch=2),  # beta = 0.5: NPM, the predicting head, trains; the coarse head that screens it too
    ("popnet", "k"): dict(lr=5e-3, steps=100, epoch=3, max_epoch=4),  # the last stage, stage 1 frozen
    ("popnet", "1"): dict(lr=2e-3, steps=120, epoch=3, max_epoch=4),
    "amp": dict(lr=3e-3, steps=160, options={"dropout": 0.0}),  # 80 steps left 1-way 0.01 short on another CPU (ATEN_CPU_CAPABILITY=default)
    "finetuning": dict(lr=3e-3, steps=80),
    "sgone": dict(lr=1e-3, steps=80),
    # an image and its mirror image as the support: their few-pixel feature maps need the same object on both sides
    "ppnet": dict(lr=1e-3, steps=60, episode="mirror"),
    "pfenet": dict(lr=3e-3, steps=50, episode="mirror", loss_key="loss_main", options={"reduce_dim": 64}),
}


def small_model(method: str, way: str, **options) -> torch.nn.Module:
    """The method as the smoke profile builds it (the registry's small settings), seeded."""
    torch.manual_seed(0)
    cfg = make_config("smoke", method=method, way=way, model_options=options)
    return model_from_config(cfg, NUM_CLASSES)


def episode(way: str, seed: int = 0, batch: int = 1, kind: str = "boxes"):
    """Toy query and support (query, support, support_label, query_label).

    ``boxes``: coloured boxes of classes 2, 4 and 11 (1-way: class 2 alone in the support, 4 and 11 background).
    ``mirror``: 1-way, a noisy image with a box of class 5 and its mirror image as the support.
    """
    if kind == "mirror":
        img, lab = flat_episode(seed)
        lab = torch.where(lab == 5, lab, torch.zeros_like(lab))
        q, s, sl, ql = img, img.flip(-1), lab.flip(-1), lab
    else:
        g = torch.Generator().manual_seed(seed)
        classes = (2, 4, 11) if way == "k" else (2,)
        (q, ql), (s, sl) = box_episode(g, classes), box_episode(g, classes)
        if way == "1":
            ql = box_episode(torch.Generator().manual_seed(seed), (2, 4, 11))[1]
    return q.repeat(batch, 1, 1, 1), s.repeat(batch, 1, 1, 1), sl.repeat(batch, 1, 1), ql.repeat(batch, 1, 1)


def as_target(query_label: torch.Tensor, support_label: torch.Tensor, way: str) -> torch.Tensor:
    """What the prediction's argmax should equal: raw ids (k-way), or the support class's foreground (1-way)."""
    if way == "k":
        return query_label
    shown = [c for c in support_label.unique().tolist() if c not in (0, 255)]
    return (query_label == shown[0]).long()


@pytest.mark.parametrize("method,way", CASES)
def test_output_contract(method, way):
    model = small_model(method, way)
    q, s, sl, ql = episode(way, batch=2)
    out = model.train()(q, s, sl, query_label=ql)
    channels = NUM_CLASSES if way == "k" else 2
    assert out["pred"].shape == (2, channels, 64, 64)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    model.eval()
    with torch.no_grad():  # a support of another size than the query
        out = model(q, F.interpolate(s, size=(48, 40)), sl[:, :48, :40])
    assert out["pred"].shape == (2, channels, 64, 64) and "loss" not in out
    assert torch.isfinite(out["pred"]).all()
    if way == "k":  # classes the support does not show never win
        absent = [c for c in range(NUM_CLASSES) if c not in sl[:, :48, :40].unique().tolist()]
        assert torch.all(out["pred"][:, absent] <= LOW_LOGIT)


@pytest.mark.parametrize("method,way", CASES)
def test_bad_inputs_give_clear_errors(method, way):
    with pytest.raises(UnknownOptionError, match="unknown .* option"):
        small_model(method, way, not_an_option=1)
    model = small_model(method, way).eval()
    q, s, sl, _ = episode(way)
    with pytest.raises(ValueError, match="no foreground pixels"):
        model(q, s, torch.zeros_like(sl))
    if way == "1":
        two = episode("k")[2]
        with pytest.raises(ValueError, match="exactly one foreground class"):
            model(q, s, two)
    with pytest.raises(ValueError):
        model(q[:, :2], s, sl)  # two colour channels


@pytest.mark.parametrize("method,way", CASES)
def test_overfits_one_episode(method, way):
    settings = dict(OVERFIT.get((method, way), OVERFIT.get(method, {})))
    lr, steps, options = settings.pop("lr", 1e-3), settings.pop("steps", 40), settings.pop("options", {})
    kind, loss_key = settings.pop("episode", "boxes"), settings.pop("loss_key", "loss")
    model = small_model(method, way, **options)
    q, s, sl, ql = episode(way, kind=kind)
    losses, _ = overfit(model, q, s, sl, ql, steps=steps, lr=lr, loss_key=loss_key, **settings)
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        pred = model(q, s, sl, **settings)["pred"].argmax(1)
    target = as_target(ql, sl, way)
    background_everywhere = (target == 0).float().mean().item()
    accuracy = (pred == target).float().mean().item()
    print(f"{method} {way}-way: pixel accuracy {accuracy:.3f} (background everywhere {background_everywhere:.3f})")
    # a clear margin over predicting background everywhere: at least 40% of the way from it to a perfect parse
    assert accuracy >= background_everywhere + 0.4 * (1 - background_everywhere), (accuracy, background_everywhere)


@pytest.mark.parametrize("method,way", CASES)
def test_class_balanced_loss_is_an_option_of_every_method(method, way):
    """The CPU profiles train every method class-balanced: each has the option, and it changes the parsing loss."""
    q, s, sl, ql = episode(way)
    losses = [small_model(method, way, class_balanced_loss=flag).train()(q, s, sl, query_label=ql, epoch=1,
                                                                           max_epoch=2)["loss"] for flag in (False, True)]
    assert torch.isfinite(losses[1]) and losses[1].requires_grad
    assert not torch.isclose(losses[0], losses[1], rtol=1e-4), losses


@pytest.mark.parametrize("method,way", CASES)
def test_the_head_that_predicts_is_trained(method, way):
    """Every trainable parameter that shapes the test-time prediction gets a gradient from the training loss in
    some epoch of a short schedule, and every stage's predicting head (:meth:`predicting_heads`: a model trained in
    stages names one per stage) has changed after it (a stage whose predicting head only ever gets zero weight fails
    here)."""
    model = small_model(method, way)
    q, s, sl, ql = episode(way, batch=2)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model.eval()
    model.zero_grad()
    pred = model(q, s, sl)["pred"].float()
    if pred.requires_grad:
        pred.sum().backward()
        shapes_pred = {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
    else:  # fitted per episode from copies of the trained parser (Fine-Tuning): all of it shapes the prediction
        shapes_pred = set(trainable)
    assert shapes_pred, "no trainable parameter shapes the prediction"
    heads = {f"{name}.{n}": p for name, head in model.predicting_heads().items()
             for n, p in head.named_parameters() if p.requires_grad}
    assert all(any(n.startswith(f"{name}.") for n in heads) for name in model.predicting_heads()), \
        "a predicting head without trainable parameters"
    before = {n: p.detach().clone() for n, p in heads.items()}
    optimizer = torch.optim.Adam(list(trainable.values()), lr=1e-3)  # moves any parameter with a gradient
    trained: set[str] = set()
    model.train()
    epochs = 3
    for epoch in range(epochs):
        optimizer.zero_grad()
        model(q, s, sl, query_label=ql, epoch=epoch, max_epoch=epochs)["loss"].backward()
        trained |= {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
    assert not shapes_pred - trained, f"never trained, yet they shape the prediction: {sorted(shapes_pred - trained)}"
    unchanged = {n.rsplit(".", 1)[0] for n, p in heads.items() if torch.equal(p.detach(), before[n])}
    assert not unchanged, f"predicting heads still at their initialisation after {epochs} epochs: {sorted(unchanged)}"


@pytest.mark.parametrize("method,way", CASES)
def test_smoke_training_and_evaluation(tiny_synthetic, tmp_path, method, way):
    run = tmp_path / "run"
    cfg = make_config("smoke", method=method, way=way, data_root=str(tiny_synthetic.root), val_pairs_per_class=1)
    train(cfg, run, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == cfg.epochs and all(np.isfinite(r["loss"]) for r in log)
    result = evaluate_run(run, max_pairs=4, progress=False)
    written = json.loads((run / "metrics_max-pairs-4.json").read_text())
    assert written["method"] == method and written["way"] == way and written["num_pairs"] == 4
    for key in ("novel_miou", "base_miou", "human_miou", "overall_acc", "mean_base_acc", "per_class_iou"):
        assert key in result, key
    assert 0.0 <= result["human_miou"] <= 100.0


@pytest.mark.parametrize("method,way", CASES)
def test_gpu_fast_path_trains_and_evaluates_in_bf16_on_cpu(tiny_synthetic, tmp_path, method, way):
    """The GPU path (bf16 autocast, channels-last) forced on the CPU: where dtype mixes (bf16 features against fp32
    prototype memories, losses on bf16 logits) and memory-format assumptions of the paper profile would fail."""
    cfg = make_config("smoke", method=method, way=way, data_root=str(tiny_synthetic.root), epochs=1,
                      val_pairs_per_class=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, fast=True)
    assert trainer.fast and trainer.device.type == "cpu"
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    summary = trainer.train()
    losses = [v for k, v in summary["history"][0].items() if k.startswith("loss")]
    assert losses and all(np.isfinite(v) for v in losses)
    episodes = MetaTestEpisodes(trainer.ds, default_test_pairs(trainer.ds)[:3], way=way)
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) and v.dim() else v for k, v in episodes[0].items()}
    trainer.model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = trainer.model(batch["query_image"], batch["support_image"], batch["support_label"])
    # Fine-Tuning adapts its head copies in float32 on purpose (one image is too little for bf16 steps)
    assert out["pred"].dtype == (torch.float32 if method == "finetuning" else torch.bfloat16)
    metrics = evaluate_episodes(trainer.model, episodes, trainer.spec, 1, way, trainer.device, progress=False,
                                fast=True)
    assert 0.0 <= metrics["human_miou"] <= 100.0
