"""The split files of the authors' release, shipped as package data (Apache-2.0, see official/NOTICE)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .vocab import DatasetSpec, get_dataset

_FOLDERS = {"atr": "ATR_OS", "lip": "LIP_OS", "cihp": "CIHP_OS"}


def official_dir() -> Path:
    """Folder holding NOTICE, SHA256SUMS and <DS>_OS/ with the released files."""
    return Path(str(resources.files("oshp.data") / "official"))


def official_list_path(dataset: str | DatasetSpec, split: str) -> Path:
    spec = get_dataset(dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return official_dir() / _FOLDERS[spec.key] / f"meta_{split}_id.txt"


@lru_cache(maxsize=None)
def official_ids(dataset: str, split: str) -> tuple[str, ...]:
    """The released, lexicographically sorted id list of a dataset's meta-train or meta-test split."""
    path = official_list_path(dataset, split)
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@lru_cache(maxsize=None)
def official_atr_supports(split: str) -> dict[int, tuple[int, ...]]:
    """The released ATR support index ({key: sorted list indices}); keys c and c+17 as in the release.

    Key c (1..17) lists query-pool images (test: list indices 0..200, train: 0..7500) that contain
    raw label c after the symmetric merges; key c+17 lists the support-pool images that contain c.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    path = official_dir() / "ATR_OS" / f"meta_{split}_atr_supports.json"
    raw = json.loads(path.read_text())
    return {int(k): tuple(v) for k, v in raw.items()}


def verify_checksums() -> list[str]:
    """Names of shipped files whose SHA-256 differs from SHA256SUMS (empty when all are intact)."""
    root = official_dir()
    bad = []
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = root / name.strip()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name.strip())
    return bad
