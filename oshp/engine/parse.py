"""Parse new images with a trained run: one support image and its mask define the classes.

This is how an engineer uses oshp: annotate one image with the classes wanted (ids of the dataset's
vocabulary, e.g. ATR's), and every query is parsed into exactly those classes. A folder of queries reuses the
support's features (:class:`PreparedSupport`): the support goes through the backbone once, not once per query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.layout import load_label_map, load_rgb, save_label_map
from ..core.errors import DatasetError
from ..data.vocab import DatasetSpec, get_dataset, human_mask, merge_labels, present_classes, restrict_to_classes
from ..core.labels import BACKGROUND
from .evaluate import one_way_to_class
from .run import load_run_model
from ..data.palette import label_palette, overlay_with_legend


def support_classes_from_names(spec: DatasetSpec, names: str | list[str] | None) -> tuple[int, ...] | None:
    """'skirt,pants' -> (5, 6); an unknown name raises UnknownClassError listing the valid ones."""
    if not names:
        return None
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    # background is a class of every parse whether named or not: it is never asked of the support
    return tuple(sorted({spec.class_id(n) for n in names} - {BACKGROUND}))


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Files of a query folder that ``oshp parse`` reads (case-insensitive)."""


def output_labels(model: torch.nn.Module, out: dict, support_mask: np.ndarray) -> np.ndarray:
    """The model's prediction as an HxW uint8 map of OSHP ids (a 1-way model's foreground becomes its class)."""
    pred = out["pred"].float().argmax(1)
    if getattr(getattr(model, "config", None), "way", "k") == "1":
        pred = one_way_to_class(pred, present_classes(support_mask)[0], out["pred"].shape[1])
    return pred[0].cpu().numpy().astype(np.uint8)


def _image_tensor(a: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float in [0, 1] (what every model of the package takes)."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float().div(255)


class PreparedSupport:
    """One support (image + OSHP mask) made ready for many queries.

    Models with ``encode_support`` (EOP-Net) encode it once: its backbone pass and prototypes are reused by every
    query. Other methods keep its tensors and run their plain forward per query. Either way :meth:`parse` gives the
    labels :func:`parse_arrays` gives (up to float rounding of a batched vs a separate backbone pass).
    """

    def __init__(self, model: torch.nn.Module, spec: DatasetSpec, support: np.ndarray, support_mask: np.ndarray,
                 device: torch.device) -> None:
        self.model, self.device, self.mask = model, device, support_mask
        self.image = _image_tensor(support).to(device)
        self.label = torch.from_numpy(support_mask.astype(np.int64))[None].to(device)
        self.human = torch.from_numpy(human_mask(support_mask, spec).astype(np.int64))[None].to(device)
        self.cache: Any = None
        encode = getattr(model, "encode_support", None)
        if callable(encode) and not model.training:
            with torch.no_grad():
                self.cache = encode(self.image, self.label, support_human=self.human)

    @property
    def cached(self) -> bool:
        """Whether the support's features are reused (else each query runs the plain forward)."""
        return self.cache is not None

    @torch.no_grad()
    def parse(self, query: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 query -> HxW uint8 label map (OSHP ids)."""
        q = _image_tensor(query).to(self.device)
        if self.cache is not None:
            out = self.model.forward_with_support(q, self.cache)  # type: ignore[operator]
        else:
            out = self.model(q, self.image, self.label, support_human=self.human)
        return output_labels(self.model, out, self.mask)


def query_images(folder: str | Path) -> list[Path]:
    """The .jpg/.jpeg/.png files of a folder, sorted by name; a clear error when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"query folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DatasetError(f"query folder {folder} holds {stems[f.stem].name} and {f.name}: their outputs would "
                               f"both be {f.stem}.png; rename one of them")
        stems[f.stem] = f
    return files


@torch.no_grad()
def parse_arrays(model: torch.nn.Module, spec: DatasetSpec, query: np.ndarray, support: np.ndarray,
                 support_mask: np.ndarray, device: torch.device) -> np.ndarray:
    """HxWx3 uint8 query and support, OSHP support mask -> HxW uint8 label map of the query (OSHP ids)."""
    q, s = _image_tensor(query).to(device), _image_tensor(support).to(device)
    label = torch.from_numpy(support_mask.astype(np.int64))[None].to(device)
    human = torch.from_numpy(human_mask(support_mask, spec).astype(np.int64))[None].to(device)
    out = model(q, s, label, support_human=human)
    return output_labels(model, out, support_mask)


def parse_files(checkpoint: str | Path, query: str | Path, support: str | Path, support_mask: str | Path,
                out: str | Path, *, classes: str | None = None, device: str = "auto") -> dict:
    """Parse one query; writes OUT (colour overlay) and OUT with suffix _labels.png (raw label ids).

    When ``query`` is a folder, every .jpg/.jpeg/.png in it is parsed (sorted by name) with the support encoded
    once, and ``out`` is a folder receiving ``<stem>.png`` (overlay) and ``<stem>_labels.png`` per query.
    """
    if Path(query).is_dir():
        return parse_folder(checkpoint, query, support, support_mask, out, classes=classes, device=device)
    out = Path(out)
    labels = out.with_name(out.stem + "_labels.png")
    if out.is_dir():
        raise DatasetError(f"--out {out} is a folder; with one --query image, --out is the overlay PNG to write "
                           f"(e.g. {out / 'parse.png'})")
    for written in (out, labels):
        for flag, given in (("--query", query), ("--support", support), ("--support-mask", support_mask)):
            if written.exists() and Path(given).exists() and written.resolve() == Path(given).resolve():
                raise DatasetError(f"writing {written} would overwrite your {flag} file; choose another --out")
    q_img = load_rgb(query, role="--query")
    cfg, model, dev, _ = load_run_model(None, checkpoint=checkpoint, device=device)
    spec = get_dataset(cfg.dataset)
    s_img, s_mask = _load_support(spec, support, support_mask, classes, cfg.way)
    pred = parse_arrays(model, spec, q_img, s_img, s_mask, dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_with_legend(q_img, pred, spec)).save(out)
    save_label_map(labels, pred, palette=label_palette(spec))
    return {"overlay": str(out), "labels": str(labels), **_classes_and_colours(spec, s_mask),
            "pixels": _pixels(spec, pred)}


def _classes_and_colours(spec: DatasetSpec, support_mask: np.ndarray) -> dict:
    """The support's classes by name, and each class's colour in the overlay and the label map (#rrggbb)."""
    palette = label_palette(spec)
    shown = present_classes(support_mask)
    return {"classes": [spec.class_name(c) for c in shown],
            "colours": {spec.class_name(c): "#%02x%02x%02x" % tuple(int(v) for v in palette[c]) for c in shown}}


def _pixels(spec: DatasetSpec, pred: np.ndarray) -> dict[str, int]:
    return {spec.class_name(c): int((pred == c).sum()) for c in present_classes(pred)}


def _load_support(spec: DatasetSpec, support: str | Path, support_mask: str | Path, classes: str | None,
                  way: str) -> tuple[np.ndarray, np.ndarray]:
    s_img = load_rgb(support, role="--support")
    mask = load_label_map(support_mask, spec, role="--support-mask")
    if mask.shape != s_img.shape[:2]:
        raise DatasetError(f"support mask {support_mask} is {mask.shape[1]}x{mask.shape[0]} but the support image "
                           f"{support} is {s_img.shape[1]}x{s_img.shape[0]}; they must have the same size")
    return s_img, prepare_support(spec, mask, support_classes_from_names(spec, classes), str(support_mask), way)


def parse_folder(checkpoint: str | Path, query_dir: str | Path, support: str | Path, support_mask: str | Path,
                 out: str | Path, *, classes: str | None = None, device: str = "auto") -> dict:
    """Parse every image of ``query_dir`` with one support whose features are computed once.

    Writes ``OUT/<stem>.png`` (colour overlay) and ``OUT/<stem>_labels.png`` (label ids) per query; OUT must not be
    the query folder (the outputs would become queries of the next run).
    """
    query_dir, out = Path(query_dir), Path(out)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        raise DatasetError(f"--query {query_dir} is a folder, so --out must be a folder too, not the image file "
                           f"name {out.name}")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file; with a folder of queries --out must be a folder")
    if out.exists() and out.resolve() == query_dir.resolve():
        raise DatasetError(f"--out must be another folder than --query {query_dir}: the outputs would be read as "
                           f"queries next time")
    files = query_images(query_dir)
    cfg, model, dev, _ = load_run_model(None, checkpoint=checkpoint, device=device)
    spec = get_dataset(cfg.dataset)
    s_img, s_mask = _load_support(spec, support, support_mask, classes, cfg.way)
    prepared = PreparedSupport(model, spec, s_img, s_mask, dev)
    out.mkdir(parents=True, exist_ok=True)
    palette = label_palette(spec)
    results = []
    for path in files:
        q_img = load_rgb(path)
        pred = prepared.parse(q_img)
        overlay_path, labels_path = out / f"{path.stem}.png", out / f"{path.stem}_labels.png"
        Image.fromarray(overlay_with_legend(q_img, pred, spec)).save(overlay_path)
        save_label_map(labels_path, pred, palette=palette)
        results.append({"query": str(path), "overlay": str(overlay_path), "labels": str(labels_path),
                        "pixels": _pixels(spec, pred)})
    return {"out": str(out), "count": len(results), "support_cached": prepared.cached,
            **_classes_and_colours(spec, s_mask), "queries": results}
