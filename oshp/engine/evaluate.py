"""Meta-testing (paper section 6.2) and one-shot parsing of new images with a trained run.

Evaluation runs every meta-test pair at the query's native resolution, pools one confusion matrix over
all pairs and writes ``RUN/metrics.json`` (headline metrics in percent, per-class IoU by class name,
the configuration, seed, library versions and wall time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.episodes import MetaTestEpisodes, collate_episodes
from ..data.layout import ReleaseLayoutDataset
from ..core.errors import DatasetError
from ..data.pairs import load_pairs
from ..data.vocab import DatasetSpec
from ..metrics import ConfusionMatrix, OneWayMeter, accuracy_per_class, kway_metrics, oneway_metrics
from ..core.env import batch_to_device
from ..core.env import device_name, versions
from ..core.io import atomic_write_json
from ..data.pairs import balanced_subset, default_test_pairs
from .run import load_run_model, metrics_name
from ..models.episode import restrict_label
from ..models.prototypes import PrototypeMemory
from ..core.labels import IGNORE_INDEX


PROTOCOLS: dict[str, dict[str, Any]] = {
    "oshp": {"binary_every": 1, "gt_classes": "support"},
    "release": {"binary_every": 10, "gt_classes": "model"},
}
"""How the predictions are scored, where the release's scoring differs from oshp's (metric code is the same):

* ``binary_every``: 1-way Binary-IoU pools every pair (oshp) or every 10th pair only (the release);
* ``gt_classes``: the k-way query ground truth keeps the classes annotated in the support mask (``"support"``) or
  only those the model kept in its episode (``"model"``, the release: classes that vanish when the support mask is
  nearest-downsampled to the feature grid become background in the ground truth too).

A run of EOP-Net with ``release_compat`` is scored with the release's protocol by default, every other run with oshp's.
"""


def default_protocol(model_options: dict[str, Any]) -> dict[str, Any]:
    """The protocol a run is scored with unless told otherwise (see :data:`PROTOCOLS`)."""
    return dict(PROTOCOLS["release" if model_options.get("release_compat") else "oshp"])


def restrict_to_model_classes(target: torch.Tensor, classes: list[tuple[int, ...]] | None, model: torch.nn.Module
                              ) -> torch.Tensor:
    """B x H x W ground truth with every class the model left out of its episode made background (gt_classes=model)."""
    if classes is None:
        raise ValueError(f"{type(model).__name__} does not report the classes of its episodes, so gt_classes='model' "
                         f"cannot be applied: evaluate it with gt_classes='support'")
    return restrict_label(target, classes)


def one_way_to_class(pred: torch.Tensor, class_id: int, channels: int) -> torch.Tensor:
    """A 1-way prediction as class ids: a 2-channel (background/foreground) output's 1 becomes ``class_id``;
    an output over all class ids keeps ``class_id`` and turns everything else into background."""
    foreground = pred == 1 if channels == 2 else pred == class_id
    return torch.where(foreground, torch.full_like(pred, class_id), torch.zeros_like(pred))


@torch.no_grad()
def evaluate_episodes(model: torch.nn.Module, episodes: MetaTestEpisodes, spec: DatasetSpec, fold: int, way: str,
                      device: torch.device, *, progress: bool = True, fast: bool = False,
                      suppress_novel: bool = False, binary_every: int = 1, gt_classes: str = "support") -> dict:
    """Run a model over meta-test episodes (batch 1, native resolution) and compute the paper's metrics.

    k-way: one confusion matrix over raw ids pooled over all pairs (:func:`kway_metrics`). 1-way: the
    release's per-class 2x2 matrices and Binary-IoU (:func:`oneway_metrics`); the mean base and novel class
    accuracies come from the pooled raw-id matrix of the same predictions.

    ``suppress_novel=True`` is the lower bound of the testing bias: the same model, with background predicted
    wherever it would predict a novel class (novel mIoU 0; base and human mIoU show what that costs).
    ``binary_every`` and ``gt_classes``: the scoring protocol (:data:`PROTOCOLS`).
    """
    if gt_classes not in ("support", "model"):
        raise ValueError(f"gt_classes must be 'support' or 'model', not {gt_classes!r}")
    novel = list(spec.novel_ids(fold))
    model.eval()
    conf = ConfusionMatrix(spec.num_raw_classes)
    meter = OneWayMeter(spec, binary_every=binary_every) if way == "1" else None
    loader = DataLoader(episodes, batch_size=1, shuffle=False, collate_fn=collate_episodes)
    iterator = loader
    if progress:
        from tqdm import tqdm  # plain text: no widget warning in notebooks

        iterator = tqdm(loader, desc="evaluating", unit="pair", leave=False)
    for batch in iterator:
        batch = batch_to_device(batch, device, fast)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            out = model(batch["query_image"], batch["support_image"], batch["support_label"],
                        support_human=batch["support_human"])
        logits = out["pred"].float()
        if suppress_novel:
            logits = suppress_novel_logits(logits, novel, int(batch["class_id"][0]) if way == "1" else None)
        pred = logits.argmax(1)
        target = batch["query_label"]
        if gt_classes == "model" and way == "k":
            target = restrict_to_model_classes(target, out.get("classes"), model)
        if meter is not None:
            c = int(batch["class_id"][0])
            pred = one_way_to_class(pred, c, out["pred"].shape[1])
            binary_target = torch.where(target == IGNORE_INDEX, target, (target == c).long())
            meter.update(c, (pred == c).long(), binary_target)
        conf.update(pred.cpu(), target.cpu())
    if meter is None:
        return kway_metrics(conf, spec, fold)
    metrics = oneway_metrics(meter, fold)
    acc = accuracy_per_class(conf)
    mean = lambda ids: _nan_to_none(np.nanmean([acc[c] for c in ids]) if any(np.isfinite(acc[c]) for c in ids)  # noqa
                                    else float("nan"))
    metrics["mean_base_acc"] = mean(spec.base_foreground_ids(fold))
    metrics["mean_novel_acc"] = mean(spec.novel_ids(fold))
    return metrics


def suppress_novel_logits(logits: torch.Tensor, novel: list[int], class_id: int | None) -> torch.Tensor:
    """Logits with novel classes never winning (k-way: their channels; 1-way: the foreground of a novel episode)."""
    logits = logits.clone()
    low = torch.finfo(logits.dtype).min
    if class_id is None:
        logits[:, [c for c in novel if c < logits.shape[1]]] = low
    elif class_id in novel:
        logits[:, 1:] = low
    return logits


def background_baseline(ds: ReleaseLayoutDataset, pairs: list[dict], fold: int, way: str) -> dict:
    """The lower bound: every query pixel predicted background, scored exactly like a model."""
    episodes = MetaTestEpisodes(ds, pairs, way=way)
    conf = ConfusionMatrix(ds.spec.num_raw_classes)
    meter = OneWayMeter(ds.spec) if way == "1" else None
    for i in range(len(episodes)):
        target = episodes[i]["query_label"]
        zeros = torch.zeros_like(target)
        conf.update(zeros, target)
        if meter is not None:
            c = episodes.refs[i].class_id
            meter.update(c, zeros, torch.where(target == IGNORE_INDEX, target, (target == c).long()))
    return kway_metrics(conf, ds.spec, fold) if meter is None else oneway_metrics(meter, fold)


def _nan_to_none(x: float) -> float | None:
    return None if not np.isfinite(x) else 100.0 * float(x)


def forget_novel_prototypes(model: torch.nn.Module, novel: list[int] | tuple[int, ...], num_classes: int) -> int:
    """Make every class-level prototype memory treat ``novel`` as never trained (returns how many memories it touched).

    At test time a class whose memory slot was updated in training uses the memory (eq. 3), any other class the
    support's static prototype (section 4.2). A one-shot run never updates its novel slots; an oracle run
    (``label_novel``) does. Forgetting them scores an oracle's novel classes by the rule a one-shot run's novel classes
    get, so that the two differ only in what they were trained on.
    """

    memories = [m for m in model.modules() if isinstance(m, PrototypeMemory) and m.num_slots == num_classes]
    if not memories:
        raise ValueError(f"{type(model).__name__} keeps no class prototype memory (only EOP-Net and POPNet do), so "
                         "there is nothing to forget: evaluate it without --static-novel")
    for memory in memories:
        memory.num_updates[list(novel)] = 0
    return len(memories)


def evaluate_run(run: str | Path, *, data_root: str | Path | None = None, pairs: str | Path | None = None,
                 max_pairs: int | None = None, device: str = "auto", progress: bool = True,
                 suppress_novel: bool = False, static_novel: bool = False, options: dict[str, Any] | None = None,
                 out: str | Path | None = None, binary_every: int | None = None, gt_classes: str | None = None,
                 test_size: int | None = None) -> dict:
    """Evaluate a run's checkpoint on its meta-test pairs and write RUN/metrics.json (or ``out``); returns what was
    written, and its ``path``.

    ``suppress_novel``: the lower bound (background wherever a novel class would be predicted), see
    :func:`evaluate_episodes`; it is written to RUN/metrics_suppress_novel.json unless ``out`` says otherwise.
    ``static_novel``: novel classes from the support's static prototype even where training filled their memory slots
    (oracle runs; :func:`forget_novel_prototypes`); written to RUN/metrics_static_novel.json unless ``out`` says
    otherwise. For a one-shot run it changes nothing.
    ``options``: test-time model options for this evaluation only (:func:`load_run_model`); the file name says them
    (e.g. RUN/metrics_test_prototypes-static.json).
    ``binary_every``, ``gt_classes``: the scoring protocol (:data:`PROTOCOLS`); None takes the run's default (the
    release's for a ``release_compat`` run). A protocol other than the default is said in the file name.
    ``test_size``: the side the model sees (0: the native images); None takes the run's (``TrainConfig.test_size``).
    Another size than the run's is said in the file name too.
    """
    if suppress_novel and static_novel:
        raise ValueError("choose one of suppress_novel and static_novel: they write different bounds")
    run = Path(run)
    cfg, model, dev, ckpt = load_run_model(run, device=device, options=options, test_size=test_size)
    protocol = default_protocol(cfg.model_options)
    changed = {key: value for key, value in (("binary_every", binary_every), ("gt_classes", gt_classes))
               if value is not None and value != protocol[key]}
    protocol.update(changed)
    if test_size is not None and (test_size or None) != ckpt["config"].get("test_size"):
        changed["test_size"] = test_size or "native"
    root = Path(data_root or cfg.data_root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"the dataset of run {run} is not at {root} (where it was when the run trained); pass "
                           f"--data-root with the folder it is in now")
    ds = ReleaseLayoutDataset.open(root, cfg.dataset)
    pair_list = load_pairs(pairs) if pairs else default_test_pairs(ds)
    if max_pairs:
        pair_list = balanced_subset(pair_list, max_pairs)
    episodes = MetaTestEpisodes(ds, pair_list, way=cfg.way)
    if static_novel:
        forget_novel_prototypes(model, ds.spec.novel_ids(cfg.fold), ds.spec.num_raw_classes)
    started = time.time()
    metrics = evaluate_episodes(model, episodes, ds.spec, cfg.fold, cfg.way, dev, progress=progress,
                                fast=cfg.amp and dev.type == "cuda", suppress_novel=suppress_novel, **protocol)
    result = {
        **{k: metrics.get(k) for k in ("novel_miou", "base_miou", "human_miou", "overall_acc", "mean_base_acc",
                                       "mean_novel_acc", "binary_miou") if k in metrics},
        "per_class_iou": metrics["per_class_iou"],
        "details": metrics,
        "method": cfg.method, "dataset": ds.spec.key, "fold": cfg.fold, "way": cfg.way, "profile": cfg.profile,
        "num_pairs": len(pair_list), "pairs": str(pairs) if pairs else "default meta-test pairs (oshp pairs)",
        "epoch": ckpt["epoch"], "seed": cfg.seed, "config": cfg.to_json(),
        "device": device_name(dev), "versions": versions(), "wall_time_s": round(time.time() - started, 2),
        "units": "percent", "suppress_novel": suppress_novel, "static_novel": static_novel,
        "eval_options": dict(options or {}), "protocol": protocol, "test_size": cfg.test_size,
    }
    target = Path(out) if out else run / metrics_name(suppress_novel, static_novel, options, max_pairs, changed)
    atomic_write_json(result, target)
    return {**result, "path": str(target)}


def run_metrics(run: str | Path, *, max_pairs: int | None = None, progress: bool = True, suppress_novel: bool = False,
                static_novel: bool = False) -> dict:
    """A finished run's metrics with these switches: read from the run folder, evaluated first when missing (so an
    interrupted study re-evaluates nothing)."""
    path = Path(run) / metrics_name(suppress_novel, static_novel, max_pairs=max_pairs)
    if not path.is_file():
        return evaluate_run(run, max_pairs=max_pairs, progress=progress, suppress_novel=suppress_novel,
                            static_novel=static_novel)
    return json.loads(path.read_text())


