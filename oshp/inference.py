"""Parse new images with a trained run: one support image and its mask define the classes.

This is how an engineer uses oshp: annotate one image with the classes wanted (ids of the dataset's
vocabulary, e.g. ATR's), and every query is parsed into exactly those classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.layout import DatasetError, load_label_map, load_rgb, save_label_map
from .data.vocab import DatasetSpec, get_dataset, human_mask, merge_labels, present_classes, restrict_to_classes
from .evaluation import load_run_model
from .plotting import label_palette, overlay


def support_classes_from_names(spec: DatasetSpec, names: str | list[str] | None) -> tuple[int, ...] | None:
    """'skirt,pants' -> (5, 6); an unknown name raises UnknownClassError listing the valid ones."""
    if not names:
        return None
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return tuple(sorted({spec.class_id(n) for n in names}))


def prepare_support(spec: DatasetSpec, mask: np.ndarray, classes: tuple[int, ...] | None, where: str,
                    way: str) -> np.ndarray:
    """Raw support mask -> OSHP mask restricted to the asked classes; clear errors when nothing is left."""
    merged = merge_labels(mask, spec)
    if classes is not None:
        missing = [spec.class_name(c) for c in classes if c not in present_classes(merged)]
        if missing:
            raise DatasetError(f"{where} has no pixels of {', '.join(missing)}; annotate them in the support mask "
                               f"or drop them from --classes")
        merged = restrict_to_classes(merged, classes)
    shown = present_classes(merged)
    if not shown:
        raise DatasetError(f"support mask {where} has no foreground pixels: annotate at least one class of "
                           f"{spec.display} (ids {', '.join(str(c) for c in spec.foreground_ids)}) in it")
    if way == "1" and len(shown) != 1:
        names = ", ".join(spec.class_name(c) for c in shown)
        raise DatasetError(f"this is a 1-way model: it parses one class at a time, but {where} shows {names}; "
                           f"pick one with --classes NAME")
    return merged


@torch.no_grad()
def parse_arrays(model: torch.nn.Module, spec: DatasetSpec, query: np.ndarray, support: np.ndarray,
                 support_mask: np.ndarray, device: torch.device) -> np.ndarray:
    """HxWx3 uint8 query and support, OSHP support mask -> HxW uint8 label map of the query (OSHP ids)."""
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float().div(255)  # noqa
    q, s = to_tensor(query).to(device), to_tensor(support).to(device)
    label = torch.from_numpy(support_mask.astype(np.int64))[None].to(device)
    human = torch.from_numpy(human_mask(support_mask, spec).astype(np.int64))[None].to(device)
    out = model(q, s, label, support_human=human)
    pred = out["pred"].float().argmax(1)[0].cpu().numpy().astype(np.uint8)
    return pred


def parse_files(checkpoint: str | Path, query: str | Path, support: str | Path, support_mask: str | Path,
                out: str | Path, *, classes: str | None = None, device: str = "auto") -> dict:
    """Parse one query; writes OUT (colour overlay) and OUT with suffix _labels.png (raw label ids)."""
    cfg, model, dev, _ = load_run_model(None, checkpoint=checkpoint, device=device)
    spec = get_dataset(cfg.dataset)
    q_img, s_img = load_rgb(query), load_rgb(support)
    mask = load_label_map(support_mask, spec)
    if mask.shape != s_img.shape[:2]:
        raise DatasetError(f"support mask {support_mask} is {mask.shape[1]}x{mask.shape[0]} but the support image "
                           f"{support} is {s_img.shape[1]}x{s_img.shape[0]}; they must have the same size")
    s_mask = prepare_support(spec, mask, support_classes_from_names(spec, classes), str(support_mask), cfg.way)
    pred = parse_arrays(model, spec, q_img, s_img, s_mask, dev)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(q_img, pred, spec)).save(out)
    labels = out.with_name(out.stem + "_labels.png")
    save_label_map(labels, pred, palette=label_palette(spec))
    found = {spec.class_name(c): int((pred == c).sum()) for c in present_classes(pred)}
    return {"overlay": str(out), "labels": str(labels), "classes": [spec.class_name(c) for c in present_classes(s_mask)],
            "pixels": found}
