"""Procedural synthetic human-parsing images in the ATR vocabulary, written in the release layout.

Why: the real ATR, LIP and CIHP images cannot be shipped, yet the whole OSHP pipeline (pairs, training,
evaluation, figures) has to run and be tested on a laptop CPU. These images are stylised people in
clothes with exact raw ATR label maps. They keep the three difficulties the paper names: small parts
(shoes, sunglasses, hats), testing bias (clothing-coloured background clutter) and similar parts (skirt
and dress share one colour family and its patterns; upper-clothes vs the top of a dress).

Every image comes from its own generator seeded with (seed, split, index), so a dataset is
byte-identical for a given seed whatever the number of worker processes.
"""

from __future__ import annotations

import os
import shutil
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..layout import (
    FLIPPED_LABEL_DIR,
    IMAGE_DIR,
    LABEL_DIR,
    LIST_DIR,
    META_FILE,
    ReleaseLayoutDataset,
    list_file,
    read_dataset_meta,
    save_label_map,
    write_dataset_meta,
    write_id_list,
)
from ...core.errors import DatasetError
from ..vocab import ATR, flip_labels
from ..palette import label_palette
from .draw import JPEG_QUALITY
from .people import render_person_image
from .people import MIN_SIZE

GENERATOR = "oshp synth"
VERSION = 1
SPLIT_CODES = {"train": 1, "test": 2}


# ============================================================================ dataset
def _image_id(split: str, index: int, count: int) -> str:
    return f"synth_{split}_{index:0{max(6, len(str(count)))}d}"


def _render_and_write(task: tuple[Path, str, int, int, int, str, np.ndarray]) -> np.ndarray:
    """Worker: render one image from its own seed, write its three files, return its class pixel counts."""
    out, split, index, seed, size, image_id, palette = task
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    image, label = render_person_image(rng, size)
    Image.fromarray(image).save(out / IMAGE_DIR / f"{image_id}.jpg", quality=JPEG_QUALITY)
    save_label_map(out / LABEL_DIR / f"{image_id}.png", label, palette=palette)
    save_label_map(out / FLIPPED_LABEL_DIR / f"{image_id}.png", flip_labels(label, ATR), palette=palette)
    return np.bincount(label.ravel(), minlength=ATR.num_raw_classes)


def _prepare_output(out: Path) -> None:
    """Make ``out`` ready to write; an earlier synthetic dataset is removed, anything else is refused."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        try:
            meta = read_dataset_meta(out)
        except DatasetError:
            meta = {}
        if meta.get("generator") != GENERATOR:
            raise DatasetError(
                f"{out} is not empty and is not a synthetic oshp dataset (no {META_FILE} written by "
                f"`{GENERATOR}`); refusing to overwrite it: choose an empty or new folder"
            )
        for name in (IMAGE_DIR, LABEL_DIR, FLIPPED_LABEL_DIR, LIST_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / META_FILE).unlink()
    for name in (IMAGE_DIR, LABEL_DIR, FLIPPED_LABEL_DIR, LIST_DIR):
        (out / name).mkdir(parents=True, exist_ok=True)


def generate_synthetic(out: str | Path, train: int = 3000, test: int = 2000, size: int = 192, seed: int = 0,
                       workers: int | None = None, progress: bool = True) -> ReleaseLayoutDataset:
    """Write a synthetic ATR-vocabulary dataset in the release layout and open it.

    ``out`` may be new, empty, or an earlier synthetic dataset (which is replaced); any other folder is
    refused. Output is byte-identical for a given seed, whatever ``workers`` is.
    """
    if size < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE} px, not {size}")
    if train < 1 or test < 1:
        raise ValueError(f"need at least one train and one test image, not train={train}, test={test}")
    out = Path(out).expanduser()
    _prepare_output(out)

    palette = label_palette(ATR)
    counts = {"train": train, "test": test}
    ids = {split: [_image_id(split, i, n) for i in range(1, n + 1)] for split, n in counts.items()}
    tasks = [(out, split, i, seed, size, image_id, palette) for split in counts
             for i, image_id in enumerate(ids[split], start=1)]
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    bar = tqdm(total=len(tasks), desc=f"synthesising {out}", unit="img", disable=not progress)
    pixels = {split: np.zeros(ATR.num_raw_classes, np.int64) for split in counts}
    present = {split: np.zeros(ATR.num_raw_classes, np.int64) for split in counts}

    def collect(results) -> None:
        for task, hist in zip(tasks, results):
            pixels[task[1]] += hist
            present[task[1]] += hist > 0
            bar.update()

    if workers == 1:
        collect(map(_render_and_write, tasks))
    else:
        with Pool(workers) as pool:
            collect(pool.imap(_render_and_write, tasks, chunksize=16))
    bar.close()
    for split in counts:
        write_id_list(list_file(out, split), sorted(ids[split]))
    meta = {
        "generator": GENERATOR, "dataset": ATR.key, "version": VERSION, "train": train, "test": test, "size": size,
        "seed": seed, "train_query_pool": train // 2, "test_query_pool": max(10, test // 10),
        # how many images show each raw class, and its share of the pixels (for reports and checks)
        "class_images": {s: {ATR.raw_names[c]: int(present[s][c]) for c in range(ATR.num_raw_classes)} for s in counts},
        "class_pixel_share": {
            s: {ATR.raw_names[c]: round(float(pixels[s][c] / pixels[s].sum()), 5) for c in range(ATR.num_raw_classes)}
            for s in counts
        },
    }
    write_dataset_meta(out, meta)
    return ReleaseLayoutDataset.open(out)
