"""The run-folder contract: what a run folder holds, and reading and writing it.

A run is a folder::

    RUN/config.json       the full TrainConfig (profile + overrides), written at the start
    RUN/checkpoint.pt     model, optimiser and epoch; rewritten atomically after every epoch
    RUN/log.jsonl         one line per epoch: losses, learning rate, held-out mean base/novel class accuracy
    RUN/train.json        summary: wall time, versions, device, final epoch
    RUN/metrics*.json     evaluations (`oshp evaluate`), each named for what it was evaluated with

Training, evaluation, parsing and the study all go through these functions, so the contract is stated once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DatasetError
from ..data.vocab import get_dataset
from ..models.episode import AtInputSize
from ..models.registry import build_model
from ..core.env import resolve_device
from .config import TrainConfig, config_from_dict

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
SUMMARY = "train.json"
CHECKPOINT_FORMAT = "oshp-checkpoint-1"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted write never leaves a broken checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read an oshp checkpoint; a clear error for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing checkpoint {path}; train one with `oshp train ... --out RUN` "
                           f"(it writes RUN/{CHECKPOINT})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # pickle, zip and EOF errors all mean the same to a user
        raise DatasetError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                           f"retrain, or resume from an intact copy") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DatasetError(f"{path} is not an oshp checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
                           f"pass a RUN/{CHECKPOINT} written by `oshp train`")
    return ckpt


def model_from_config(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    return build_model(cfg.method, num_classes=num_classes, way=cfg.way, backbone=cfg.backbone,
                       pretrained=cfg.pretrained, backbone_weights=cfg.backbone_weights, **cfg.model_options)


def state_mismatch(expected: dict, state: dict) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``expected`` that ``state`` lacks, keys it has that ``expected`` does not, and keys of another shape."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    return missing, unexpected, reshaped


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load a checkpoint's weights strictly; a mismatch is summarised in one line (torch lists every key)."""
    missing, unexpected, reshaped = state_mismatch(model.state_dict(), state)
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("tensors of another shape", reshaped))
                 if keys]
        raise DatasetError(f"checkpoint {path} does not match the model its config describes: {'; '.join(parts)}; "
                           f"was config.json edited, or the checkpoint copied from another run?")
    model.load_state_dict(state, strict=True)


def run_files(folder: str | Path) -> list[str]:
    """The files of a training run in ``folder`` (empty when there is none, or no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = [CONFIG, CHECKPOINT, LOG, SUMMARY]
    return [n for n in names if (folder / n).exists()] + sorted(p.name for p in folder.glob("metrics*.json"))


def read_history(run: str | Path) -> list[dict]:
    """The per-epoch log of a run (losses, learning rate, held-out accuracies), for tables and Fig. 7."""
    path = Path(run) / LOG
    if not path.is_file():
        raise DatasetError(f"no training log {path}; is {run} a run folder written by `oshp train`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_from_run(run: str | Path) -> TrainConfig:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise DatasetError(f"no {CONFIG} in {run}; pass a run folder written by `oshp train --out RUN`")
    return config_from_dict(json.loads(path.read_text()))


METRICS = "metrics.json"


def load_run_model(run: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
                   options: dict[str, Any] | None = None, test_size: int | None = None):
    """(config, model in eval mode, device, checkpoint) of a run folder or a checkpoint file.

    The model sees its inputs at the run's ``test_size`` (:class:`AtInputSize`); ``test_size`` replaces it (0: the
    native images), and ``config.test_size`` then says which size the model sees.

    ``options``: model options that replace the run's for this model only, e.g. ``{"test_prototypes": "static"}``
    (every class from the support: strict one-shot) or ``{"foreground_screening": False}`` (no coarse screening).
    Options that would change the weights (``embed_dim``, ``use_agm``, ...) are refused with a clear error.
    """
    run = Path(run) if run is not None else None
    path = Path(checkpoint) if checkpoint else run / CHECKPOINT
    if path.is_dir():  # a run folder is as good as its checkpoint
        path = path / CHECKPOINT
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, dev)
    cfg = config_from_dict(ckpt["config"])
    if run is not None and (run / CONFIG).is_file():
        check_same_run(config_from_run(run), cfg, run, path)
    spec = get_dataset(cfg.dataset)
    # weights come from the checkpoint: never fetch or read the backbone's initial weights again
    cfg.pretrained, cfg.backbone_weights = False, None
    if options:
        cfg.model_options = {**cfg.model_options, **options}
    model = model_from_config(cfg, spec.num_raw_classes)
    try:
        load_model_state(model, ckpt["model"], path)
    except DatasetError as err:
        if not options:
            raise
        raise DatasetError(f"the option(s) {sorted(options)} change the weights of the model in {path}, so they "
                           f"cannot change at evaluation; only test-time options can (e.g. test_prototypes=static, "
                           f"foreground_screening=false, restrict_to_support=false)") from err
    if test_size is not None:
        cfg.test_size = test_size or None
    if cfg.test_size:
        model = AtInputSize(model, cfg.test_size)
    return cfg, model.to(dev).eval(), dev, ckpt


def check_same_run(expected: TrainConfig, found: TrainConfig, run: Path, checkpoint: Path) -> None:
    """Refuse a checkpoint whose method, way, fold or dataset is not the run's: its metrics would be filed under the
    wrong configuration."""
    differ = [f"{key}={getattr(found, key)!r} (the run says {getattr(expected, key)!r})"
              for key in ("method", "way", "fold", "dataset") if getattr(found, key) != getattr(expected, key)]
    if differ:
        raise DatasetError(f"checkpoint {checkpoint} does not belong to run {run}: it was trained with "
                           f"{', '.join(differ)}; evaluate it with its own run folder (--run)")


def metrics_name(suppress_novel: bool = False, static_novel: bool = False,
                 options: dict[str, Any] | None = None, max_pairs: int | None = None,
                 protocol: dict[str, Any] | None = None) -> str:
    """The file in a run folder that an evaluation with these switches (and test-time options) writes. An evaluation
    on at most ``max_pairs`` pairs is named for it, so it never stands in for the full evaluation (metrics.json);
    so is one whose protocol (``protocol``: settings that differ from the run's default protocol) differs."""
    stem = "metrics" + ("_suppress_novel" if suppress_novel else "_static_novel" if static_novel else "")
    stem += "".join(f"_{key}-{str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in sorted((options or {}).items()))
    stem += "".join(f"_{key.replace('_', '-')}-{value}" for key, value in sorted((protocol or {}).items()))
    stem += f"_max-pairs-{max_pairs}" if max_pairs else ""
    return stem + ".json"


def read_metrics(run: str | Path) -> dict:
    path = Path(run) / METRICS
    if not path.is_file():
        raise DatasetError(f"no {METRICS} in {run}; run `oshp evaluate --run {run}` first")
    return json.loads(path.read_text())
