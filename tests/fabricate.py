"""Fabricate tiny ATR, LIP and CIHP datasets on disk, in their ORIGINAL download layouts and in the release layout.

Tests need real files in the exact folder structures users have, without the real data. Everything here
is deterministic: the content of an id depends only on ``(dataset, id, seed, size)``, not on which other
ids are fabricated alongside it, so two calls agree file by file. Images are random RGB JPEGs; label maps
are single-channel PNGs of valid raw ids drawn as a few rectangles, always including a left/right pair
so that flipping visibly swaps ids.

Typical use::

    from fabricate import example_ids, fabricate_original, fabricate_release
    train, test = example_ids("lip", 4, 2)
    fabricate_original(tmp_path / "raw", "lip", train, test)
    root = fabricate_release(tmp_path / "ds", "lip", train, test)
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from oshp.data.layout import (
    FLIPPED_LABEL_DIR,
    IMAGE_DIR,
    LABEL_DIR,
    list_file,
    save_label_map,
    write_dataset_meta,
    write_id_list,
)
from oshp.data.vocab import flip_labels, get_dataset

#: Original-download layouts: dataset -> variant -> {(kind, split): folder relative to the root}.
ORIGINAL_LAYOUTS: dict[str, dict[str, dict[tuple[str, str], str]]] = {
    "atr": {
        # the "humanparsing" archive extracted into root
        "standard": {
            ("images", "train"): "humanparsing/JPEGImages",
            ("labels", "train"): "humanparsing/SegmentationClassAug",
            ("images", "test"): "humanparsing/JPEGImages",
            ("labels", "test"): "humanparsing/SegmentationClassAug",
        },
        # root *is* the humanparsing folder
        "bare": {
            ("images", "train"): "JPEGImages",
            ("labels", "train"): "SegmentationClassAug",
            ("images", "test"): "JPEGImages",
            ("labels", "test"): "SegmentationClassAug",
        },
    },
    "lip": {
        "standard": {
            ("images", "train"): "TrainVal_images/train_images",
            ("labels", "train"): "TrainVal_parsing_annotations/train_segmentations",
            ("images", "test"): "TrainVal_images/val_images",
            ("labels", "test"): "TrainVal_parsing_annotations/val_segmentations",
        },
        # the flattened layout of SCHP and others: all four folders directly under root
        "flat": {
            ("images", "train"): "train_images",
            ("labels", "train"): "train_segmentations",
            ("images", "test"): "val_images",
            ("labels", "test"): "val_segmentations",
        },
        # flattened, under a LIP/ subfolder
        "flat_lip": {
            ("images", "train"): "LIP/train_images",
            ("labels", "train"): "LIP/train_segmentations",
            ("images", "test"): "LIP/val_images",
            ("labels", "test"): "LIP/val_segmentations",
        },
    },
    "cihp": {
        "standard": {
            ("images", "train"): "instance-level_human_parsing/Training/Images",
            ("labels", "train"): "instance-level_human_parsing/Training/Category_ids",
            ("images", "test"): "instance-level_human_parsing/Validation/Images",
            ("labels", "test"): "instance-level_human_parsing/Validation/Category_ids",
        },
        "bare": {
            ("images", "train"): "Training/Images",
            ("labels", "train"): "Training/Category_ids",
            ("images", "test"): "Validation/Images",
            ("labels", "test"): "Validation/Category_ids",
        },
    },
}


def example_ids(dataset: str, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Sorted, disjoint ids shaped like the dataset's real ones (ATR ``2500_1``/``dataset10k_3``, LIP
    ``100034_483681``, CIHP ``0000001``), so path handling is exercised with realistic names."""
    key = get_dataset(dataset).key
    n = n_train + n_test
    if key == "atr":
        ids = [f"2500_{i + 1}" if i % 2 == 0 else f"dataset10k_{i + 1}" for i in range(n)]
    elif key == "lip":
        ids = [f"{100034 + 17 * i}_{483681 + 1013 * i}" for i in range(n)]
    else:
        ids = [f"{i + 1:07d}" for i in range(n)]
    train, test = ids[n_test:], ids[:n_test]
    return sorted(train), sorted(test)


def _rng(dataset: str, image_id: str, seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{dataset}/{image_id}/{salt}".encode())])


def fabricate_image(dataset: str, image_id: str, size: tuple[int, int] = (24, 16), seed: int = 0) -> np.ndarray:
    """Random HxWx3 uint8 image for an id; ``size`` is (width, height) as in PIL."""
    width, height = size
    return _rng(dataset, image_id, seed, "image").integers(0, 256, (height, width, 3), dtype=np.uint8)


def fabricate_label(dataset: str, image_id: str, size: tuple[int, int] = (24, 16), seed: int = 0) -> np.ndarray:
    """HxW uint8 map of valid raw ids: background plus a few random rectangles, one of them a left-side id
    and one its right-hand twin, so a flip both mirrors the map and swaps ids."""
    spec = get_dataset(dataset)
    width, height = size
    rng = _rng(spec.key, image_id, seed, "label")
    label = np.zeros((height, width), dtype=np.uint8)
    left, right = spec.lr_pairs[int(rng.integers(len(spec.lr_pairs)))]
    classes = [left, right] + [int(c) for c in rng.integers(1, spec.num_raw_classes, 3)]
    for cid in classes:
        h = int(rng.integers(2, max(3, height // 2)))
        w = int(rng.integers(2, max(3, width // 2)))
        y = int(rng.integers(0, height - h + 1))
        x = int(rng.integers(0, width - w + 1))
        label[y : y + h, x : x + w] = cid
    return label


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=90)


def fabricate_original(
    root: str | Path,
    dataset: str,
    train_ids,
    test_ids,
    size: tuple[int, int] = (24, 16),
    seed: int = 0,
    *,
    variant: str = "standard",
) -> dict:
    """Write a tiny original download of ``dataset`` under ``root`` in a given layout ``variant``.

    Variants (see :data:`ORIGINAL_LAYOUTS`): ATR ``standard`` (``humanparsing/...``) and ``bare``; LIP
    ``standard`` (``TrainVal_images/...``), ``flat`` and ``flat_lip``; CIHP ``standard``
    (``instance-level_human_parsing/...``) and ``bare``. Train ids go to the train folders and test ids to
    the val folders (ATR has one flat folder for both). Returns ``{"root", "images": {id: path},
    "labels": {id: path}, "folders": {(kind, split): path}}`` so tests can delete or corrupt single files.
    """
    key = get_dataset(dataset).key
    layouts = ORIGINAL_LAYOUTS[key]
    if variant not in layouts:
        raise ValueError(f"{key} has layout variants {sorted(layouts)}, not {variant!r}")
    root = Path(root)
    folders = {role: root / rel for role, rel in layouts[variant].items()}
    images, labels = {}, {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        folders[("images", split)].mkdir(parents=True, exist_ok=True)
        folders[("labels", split)].mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            images[image_id] = folders[("images", split)] / f"{image_id}.jpg"
            labels[image_id] = folders[("labels", split)] / f"{image_id}.png"
            _write_jpeg(images[image_id], fabricate_image(key, image_id, size, seed))
            save_label_map(labels[image_id], fabricate_label(key, image_id, size, seed))
    return {"root": root, "images": images, "labels": labels, "folders": folders}


def fabricate_release(
    root: str | Path,
    dataset: str,
    train_ids,
    test_ids,
    size: tuple[int, int] = (24, 16),
    seed: int = 0,
    *,
    meta: bool = True,
    sort_lists: bool = True,
) -> Path:
    """Write a tiny dataset in the release layout (real files, not links) and return its root.

    Same content per id as :func:`fabricate_original` with the same ``seed``/``size``; ``Category_rev_ids``
    holds ``flip_labels`` of each label map. ``meta`` writes ``oshp_dataset.json`` naming the dataset;
    lists are sorted like the release's unless ``sort_lists`` is False.
    """
    spec = get_dataset(dataset)
    root = Path(root)
    for split, ids in (("train", train_ids), ("test", test_ids)):
        ids = list(ids)
        for image_id in ids:
            _write_jpeg(root / IMAGE_DIR / f"{image_id}.jpg", fabricate_image(spec.key, image_id, size, seed))
            label = fabricate_label(spec.key, image_id, size, seed)
            save_label_map(root / LABEL_DIR / f"{image_id}.png", label)
            save_label_map(root / FLIPPED_LABEL_DIR / f"{image_id}.png", flip_labels(label, spec))
        write_id_list(list_file(root, split), sorted(ids) if sort_lists else ids)
    if meta:
        write_dataset_meta(root, {"dataset": spec.key, "generator": "tests/fabricate.py"})
    return root
