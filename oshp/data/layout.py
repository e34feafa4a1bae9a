"""Reader for the on-disk layout of the authors' release, which every oshp dataset uses.

::

    ROOT/trainval_images/<id>.jpg        RGB image
    ROOT/trainval_classes/<id>.png       raw label ids (single channel, 'L' or 'P' mode)
    ROOT/Category_rev_ids/<id>.png       the label map mirrored with left/right ids swapped
    ROOT/list/meta_train_id.txt          sorted ids, one per line, no extension
    ROOT/list/meta_test_id.txt
    ROOT/oshp_dataset.json               optional: written by `oshp synth` / `oshp prepare`

A user who prepared data for the release can point oshp at that folder unchanged; `oshp prepare`
builds it from the original ATR, LIP or CIHP downloads; `oshp synth` writes it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .vocab import DatasetSpec, get_dataset, validate_label_values
from ..core.errors import DatasetError

IMAGE_DIR = "trainval_images"
LABEL_DIR = "trainval_classes"
FLIPPED_LABEL_DIR = "Category_rev_ids"
LIST_DIR = "list"
META_FILE = "oshp_dataset.json"
SPLITS = ("train", "test")


def list_file(root: Path | str, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return Path(root) / LIST_DIR / f"meta_{split}_id.txt"


def read_id_list(path: Path | str) -> list[str]:
    """Ids from a list file (one per line; blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"missing list file {path}: a dataset root needs list/meta_train_id.txt and list/meta_test_id.txt "
            f"(`oshp prepare` writes them from the released splits, `oshp synth` for synthetic data)"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_id_list(path: Path | str, ids) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def read_dataset_meta(root: Path | str) -> dict:
    path = Path(root) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); delete it or regenerate the dataset") from err


def write_dataset_meta(root: Path | str, meta: dict) -> None:
    path = Path(root) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _check_input_file(path: Path, kind: str, role: str | None) -> None:
    """A clear error for an input that is missing or a folder; ``role`` names the user's flag (e.g. ``--query``),
    else the file is a dataset's and `oshp check-data` lists every such problem."""
    if path.is_dir():
        raise DatasetError(f"{role + ' ' if role else ''}{path} is a folder; pass one {kind} file")
    if not path.is_file():
        fix = "check the path" if role else "run `oshp check-data` on the dataset root to list every problem"
        raise DatasetError(f"missing {kind}{' (' + role + ')' if role else ''} {path}; {fix}")


def load_rgb(path: Path | str, role: str | None = None) -> np.ndarray:
    """HxWx3 uint8 image; a clear error for missing or unreadable files (``role``: the flag that named it)."""
    path = Path(path)
    _check_input_file(path, "image", role)
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except OSError as err:
        raise DatasetError(f"cannot read image {path} ({err}); the file is corrupt, replace it") from err


def load_label_map(path: Path | str, spec: DatasetSpec | None = None, role: str | None = None) -> np.ndarray:
    """HxW uint8 raw label ids. Colour (RGB) label images are refused with an explanation."""
    path = Path(path)
    _check_input_file(path, "label map", role)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"{path} is a {img.mode} image; label maps must be single-channel PNGs of class ids "
                    f"(mode 'L' or 'P'), not colour visualisations"
                )
            label = np.array(img)
    except OSError as err:
        raise DatasetError(f"cannot read label map {path} ({err}); the file is corrupt, replace it") from err
    if label.dtype != np.uint8:
        if label.max(initial=0) > 255:
            raise DatasetError(f"{path}: label values above 255; label maps hold class ids 0..N-1 and 255")
        label = label.astype(np.uint8)
    if spec is not None:
        try:
            validate_label_values(label, spec, where=str(path))
        except ValueError as err:
            raise DatasetError(str(err)) from err
    return label


def save_label_map(path: Path | str, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a label map as a PNG of class ids; with a palette (Nx3 uint8) as mode 'P' so viewers show colours."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(label, dtype=np.uint8))  # 2-D uint8 -> mode "L"
    if palette is not None:
        img = img.convert("P")  # 'L' -> 'P' keeps the pixel values as palette indices
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
        img.putpalette(flat.reshape(-1).tolist())
    img.save(path)


@dataclass
class ReleaseLayoutDataset:
    """A dataset root in the release layout, with the OSHP vocabulary of its source dataset."""

    root: Path
    spec: DatasetSpec
    meta: dict = field(default_factory=dict)
    release_pools: bool = False
    """Use the release's 7,500-image meta-train query pool for every dataset (the paper: 14,000 for LIP/CIHP)."""

    @classmethod
    def open(cls, root: Path | str, dataset: str | DatasetSpec | None = None) -> "ReleaseLayoutDataset":
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"dataset root {root} does not exist: generate synthetic data with `oshp synth --out {root}` "
                f"or build it from the original download with `oshp prepare --dataset D --source RAW --out {root}`"
            )
        meta = read_dataset_meta(root)
        if dataset is None:
            dataset = meta.get("dataset")
            if dataset is None:
                raise DatasetError(f"{root}: say which vocabulary it uses with --dataset atr|lip|cihp")
        spec = get_dataset(dataset)
        if meta.get("dataset") not in (None, spec.key):
            raise DatasetError(
                f"{root / META_FILE} says this is a {meta['dataset'].upper()} dataset, but --dataset {spec.key} "
                f"was given; pass --dataset {meta['dataset']}"
            )
        return cls(root=root, spec=spec, meta=meta)

    # pools and pair-rule parameters: the dataset's own metadata wins (synthetic data is small)
    @property
    def train_query_pool(self) -> int:
        if "train_query_pool" in self.meta:
            return int(self.meta["train_query_pool"])
        return self.spec.train_query_pool_release if self.release_pools else self.spec.train_query_pool

    @property
    def test_query_pool(self) -> int:
        return int(self.meta.get("test_query_pool", self.spec.test_query_pool))

    @property
    def is_synthetic(self) -> bool:
        return self.meta.get("generator") == "oshp synth"

    def ids(self, split: str) -> list[str]:
        return read_id_list(list_file(self.root, split))

    def image_path(self, image_id: str) -> Path:
        return self.root / IMAGE_DIR / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        return self.root / LABEL_DIR / f"{image_id}.png"

    def flipped_label_path(self, image_id: str) -> Path:
        return self.root / FLIPPED_LABEL_DIR / f"{image_id}.png"

    def load_image(self, image_id: str) -> np.ndarray:
        return load_rgb(self.image_path(image_id))

    def load_label(self, image_id: str) -> np.ndarray:
        return load_label_map(self.label_path(image_id), self.spec)

    def load_flipped_label(self, image_id: str) -> np.ndarray:
        return load_label_map(self.flipped_label_path(image_id), self.spec)

    def load_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.load_image(image_id), self.load_label(image_id)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} but its label map "
                f"{self.label_path(image_id)} is {label.shape[1]}x{label.shape[0]}; they must match"
            )
        return image, label
