"""The authors' released EOP-Net checkpoints as ordinary oshp run folders (`oshp convert-release`).

A converted run holds ``config.json`` (the paper profile, EOP-Net with ``release_compat``: the release's computation)
and ``checkpoint.pt`` (the converted weights, no optimiser), plus ``release.json``, the account of every key of the
source file. `oshp evaluate`, `oshp parse` and the notebooks take it like a trained run; evaluated with its defaults it
follows the release's protocol (:func:`oshp.engine.evaluate.evaluate_run`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..core.errors import DatasetError
from ..core.io import atomic_write_json, sha256
from ..core.env import versions
from ..core.labels import check_way
from ..data.vocab import get_dataset
from ..models.release import ConvertedState, convert_release_state, is_deeplab_state, is_release_state
from .config import make_config
from .run import CHECKPOINT, CHECKPOINT_FORMAT, CONFIG, atomic_save, model_from_config, run_files, state_mismatch

__all__ = ["RELEASE_REPORT", "read_release_checkpoint", "convert_release"]

RELEASE_REPORT = "release.json"


def read_release_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A released state dict, read safely (``torch.load(weights_only=True)``: tensors only, no code runs).

    Unwraps the usual containers (``state_dict``, ``model``) and DataParallel's ``module.`` prefixes.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; pass the released checkpoint file itself (a .pth)")
    if not path.is_file():
        raise DatasetError(f"released checkpoint not found: {path}; download it from the authors' release and pass "
                           f"its path")
    try:
        state: object = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path} holds Python objects besides tensors, which are not read (loading them would run "
                           f"code from the file); save its state dict alone (torch.save(model.state_dict(), ...)) "
                           f"and convert that") from err
    except Exception as err:
        raise DatasetError(f"{path} is not a readable torch checkpoint ({type(err).__name__}); the file is corrupt "
                           f"or truncated: download it again") from err
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DatasetError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _check_kind(state: Mapping[str, torch.Tensor], path: Path, way: str, num_classes: int, dataset: str) -> None:
    if is_deeplab_state(state):
        raise DatasetError(f"{path} is a DeepLab backbone (the COCO start point), not a trained EOP-Net: pass it to "
                           f"`oshp train --profile paper --backbone-weights {path}`")
    if not is_release_state(state):
        raise DatasetError(f"{path} is not an EOP-Net checkpoint of the authors' release (it has no 'prototype' and "
                           f"'scaler' tensors; first keys: {', '.join(list(state)[:3])})")
    one_way = "npm_class.weight" in state
    if one_way != (way == "1"):
        found = "1" if one_way else "k"
        raise DatasetError(f"{path} is a {found}-way checkpoint (it {'has' if one_way else 'lacks'} the 1-way "
                           f"'npm_class' head): pass --way {found}")
    rows = int(state["prototype"].shape[0])
    if rows != num_classes:
        fits = [key for key in ("atr", "lip", "cihp") if get_dataset(key).num_raw_classes == rows]
        raise DatasetError(f"{path} has {rows} class slots but {dataset} has {num_classes} class ids: it is a "
                           f"checkpoint of {' or '.join(fits) or 'another dataset'}; pass --dataset "
                           f"{fits[0] if fits else '...'}")


def _check_fit(converted: ConvertedState, model: torch.nn.Module, path: Path) -> None:
    """Every model tensor filled with its shape, or one line naming the release keys and what was expected."""
    expected = model.state_dict()
    source = {target: key for key, target in converted.mapped.items()}
    missing, unexpected, reshaped_keys = state_mismatch(expected, converted.state)
    reshaped = [f"{source.get(k, k)} is {tuple(converted.state[k].shape)}, expected {tuple(expected[k].shape)}"
                for k in reshaped_keys]
    problems = []
    if converted.unknown:
        problems.append(f"{len(converted.unknown)} unknown keys (first: {converted.unknown[0]})")
    if missing:
        problems.append(f"{len(missing)} tensors missing (first: oshp's {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {source.get(unexpected[0], unexpected[0])})")
    if reshaped:
        problems.append(f"{len(reshaped)} of another shape (first: {reshaped[0]})")
    if problems:
        raise DatasetError(f"{path} does not match the release's EOP-Net: {'; '.join(problems)}; is it a checkpoint of "
                           f"another model or backbone?")


def convert_release(checkpoint: str | os.PathLike, *, dataset: str, fold: int, way: str, out: str | os.PathLike,
                    data_root: str | os.PathLike | None = None) -> dict:
    """Convert a released EOP-Net checkpoint into the run folder ``out``; returns the account written to release.json.

    ``data_root``: where the prepared dataset is (default ``data/<dataset>``); evaluation can relocate it with
    ``--data-root``. A folder that already holds a run is never overwritten.
    """
    path, out = Path(checkpoint), Path(out)
    way = check_way(way)
    spec = get_dataset(dataset)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file; give a folder for the converted run")
    held = run_files(out) + ([RELEASE_REPORT] if (out / RELEASE_REPORT).exists() else [])
    if held:
        raise DatasetError(f"{out} already holds a run ({', '.join(held)}); choose another --out, or delete it first")
    state = read_release_checkpoint(path)
    _check_kind(state, path, way, spec.num_raw_classes, spec.key)
    converted = convert_release_state(state, way)
    root = Path(data_root) if data_root is not None else Path("data") / spec.key
    cfg = make_config("paper", dataset=spec.key, fold=int(fold), way=way, method="eopnet",
                      data_root=str(root.expanduser().resolve()), pretrained=False, backbone_weights=None,
                      model_options={"release_compat": True})
    model = model_from_config(cfg, spec.num_raw_classes)
    _check_fit(converted, model, path)
    model.load_state_dict(converted.state, strict=True)
    report = {
        "source": str(path.resolve()), "sha256": sha256(path), "dataset": spec.key, "fold": int(fold), "way": way,
        "mapped": len(converted.mapped), "dropped": len(converted.dropped), "added": len(converted.added),
        "dropped_keys": converted.dropped, "added_keys": converted.added,
        "dynamic_slots": [int(i) for i in model.state_dict()["fine_memory.num_updates"].nonzero().flatten()],
        "versions": versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.to_json(), out / CONFIG)
    atomic_save({"format": CHECKPOINT_FORMAT, "epoch": None, "config": cfg.to_json(), "model": model.state_dict(),
                 "history": [], "versions": versions(), "release": {"source": report["source"],
                                                                    "sha256": report["sha256"]}}, out / CHECKPOINT)
    atomic_write_json(report, out / RELEASE_REPORT)
    return report
