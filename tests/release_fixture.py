"""The release-parity fixture (tests/fixtures/release_parity, its README.md is the specification): release-shaped
state dicts filled from a seed by the rules of its WEIGHTS.md, and its stored episodes."""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "release_parity"
MANIFESTS = {"kway_18": "manifest_kway_18.tsv", "kway_20": "manifest_kway_20.tsv", "1way_18": "manifest_1way_18.tsv",
             "coco": "manifest_coco_deeplab.tsv"}


def manifest(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) rows of a manifest, in state-dict order."""
    rows = []
    for line in (FIXTURE / MANIFESTS[name]).read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def _value(key: str, shape: tuple[int, ...], dtype: str, i: int, seed: int, modules_with_stats: set[str],
           four_d: set[str]) -> np.ndarray:
    """One row of WEIGHTS.md's rules (first match wins), in float64 before the cast."""
    rng = np.random.RandomState(seed + i)
    module, _, leaf = key.rpartition(".")
    if dtype == "int64":  # R1
        return np.zeros(shape, dtype=np.int64)
    if module in modules_with_stats:  # R2: BatchNorm
        if leaf == "running_var":
            return 1.0 + 0.1 * rng.random_sample(shape)
        z = rng.standard_normal(shape)
        return 1.0 + 0.1 * z if leaf == "weight" else 0.01 * z
    if key == "scaler":  # R3
        return np.asarray(10.0 + rng.standard_normal())
    if key == "prototype":  # R4
        value = rng.standard_normal(shape) * 2.0 ** -17
        value[np.arange(shape[0]) % 3 == 0] = 0.0
        return value
    if key == "s1_prototype":  # R5
        return rng.standard_normal(shape) * 2.0 ** -4
    if leaf == "weight" and len(shape) == 4:  # R6
        z = rng.standard_normal(shape)
        fan_in = shape[1] * shape[2] * shape[3]
        if fan_in > 1:
            return z / np.sqrt(np.float64(fan_in))
        value = 1.0 + 0.1 * z
        if key == "npm_class.weight":
            value[0] = -value[0]
        return value
    if leaf == "bias" and f"{module}.weight" in four_d:  # R7
        return 0.01 * rng.standard_normal(shape)
    raise ValueError(f"no WEIGHTS.md rule for {key}")


@lru_cache(maxsize=None)
def _filled(name: str, seed: int) -> dict[str, np.ndarray]:
    rows = manifest(name)
    modules_with_stats = {k.rpartition(".")[0] for k, _, _ in rows if k.endswith(".running_mean")}
    four_d = {k for k, shape, _ in rows if len(shape) == 4}
    out = {}
    for i, (key, shape, dtype) in enumerate(rows):
        value = _value(key, shape, dtype, i, seed, modules_with_stats, four_d)
        out[key] = np.array(value, dtype=np.float32 if dtype == "float32" else np.int64, order="C")  # keeps 0-d
    return out


def release_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like the release's (``name``: kway_18, kway_20, 1way_18 or coco), filled from ``seed``."""
    return {k: torch.from_numpy(v.copy()) for k, v in _filled(name, seed).items()}


def checksum_mismatches(name: str, state: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose bytes differ from weights_seed0_checksums.tsv (seed 0 only)."""
    label = {"kway_18": "kway_18", "kway_20": "kway_20", "1way_18": "1way_18", "coco": "coco_deeplab"}[name]
    expected = {}
    for line in (FIXTURE / "weights_seed0_checksums.tsv").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if parts[0] == label:
            expected[parts[2]] = parts[3]
    if not expected:
        raise ValueError(f"weights_seed0_checksums.tsv has no rows for {label}")
    bad = [k for k in state if k not in expected]
    for key, digest in expected.items():
        if key not in state:
            bad.append(key)
            continue
        array = state[key].numpy()
        raw = array.astype(array.dtype.newbyteorder("<"), order="C").tobytes()
        if hashlib.sha256(raw).hexdigest()[:16] != digest:
            bad.append(key)
    return bad


@lru_cache(maxsize=None)
def reference(name: str) -> dict[str, np.ndarray]:
    """The stored arrays of reference_<name>.npz (kway_18, 1way_18, kway_20)."""
    with np.load(FIXTURE / f"reference_{name}.npz") as data:
        return {k: data[k] for k in data.files}


def episodes(name: str) -> list[dict[str, np.ndarray]]:
    """The stored episodes of a reference file, each a dict of its ``e<n>_`` arrays without the prefix."""
    ref = reference(name)
    count = int(ref["meta_num_episodes"])
    return [{k[len(f"e{n}_"):]: v for k, v in ref.items() if k.startswith(f"e{n}_")} for n in range(count)]
