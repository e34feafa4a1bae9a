"""Colours of human-parsing label maps, without matplotlib: every figure, label PNG, overlay and notebook uses them.

Why: one fixed palette keyed by class *name* gives ATR, LIP and CIHP the same colours; left/right twins share the
colour of their merged OSHP class, so a merged map and a raw map look the same. The colours are matplotlib's tab20
(and Set1's yellow for bags), written out so that reading data or parsing an image never imports matplotlib.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.labels import BACKGROUND, IGNORE_INDEX
from .vocab import DatasetSpec

NAME_COLOURS = {
    "hat": "#9467bd", "hair": "#8c564b", "upper-clothes": "#1f77b4", "skirt": "#e377c2", "pants": "#17becf",
    "dress": "#d62728", "shoe": "#7f7f7f", "face": "#ff7f0e", "leg": "#bcbd22", "arm": "#2ca02c", "bag": "#ffff33",
    "sunglasses": "#c5b0d5", "belt": "#c49c94", "scarf": "#9edae5", "glove": "#98df8a", "coat": "#aec7e8",
    "socks": "#c7c7c7", "torso-skin": "#ffbb78", "jumpsuits": "#ff9896",
}
"""Class colour by base name (tab20; bags Set1's yellow)."""
SPARE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd",
         "#ccebc5", "#ffed6f")
"""Set3, for class names outside the table above."""


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#1f77b4' -> (31, 119, 180)."""
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def base_name(name: str) -> str:
    """'left-shoe' -> 'shoe': twins share one colour."""
    return name.removeprefix("left-").removeprefix("right-")


def label_palette(spec: DatasetSpec) -> np.ndarray:
    """256x3 uint8 colours by raw id: background black, 255 (ignore) white, unused ids black."""
    palette = np.zeros((256, 3), np.uint8)
    spare = 0
    for rid, name in enumerate(spec.raw_names):
        if rid == BACKGROUND:
            continue
        colour = NAME_COLOURS.get(base_name(name))
        if colour is None:
            colour, spare = SPARE[spare % len(SPARE)], spare + 1
        palette[rid] = hex_to_rgb(colour)
    palette[IGNORE_INDEX] = 255
    return palette


def colorize(label: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """HxW label ids -> HxWx3 uint8 colours."""
    return label_palette(spec)[np.asarray(label, np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, spec: DatasetSpec, alpha: float = 0.55) -> np.ndarray:
    """The image with labelled (non-background) pixels tinted by their class colour."""
    colours = colorize(label, spec).astype(np.float32)
    out = image.astype(np.float32)
    tint = (np.asarray(label) != BACKGROUND)[..., None]
    out = np.where(tint, (1 - alpha) * out + alpha * colours, out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def overlay_with_legend(image: np.ndarray, label: np.ndarray, spec: DatasetSpec, alpha: float = 0.55) -> np.ndarray:
    """:func:`overlay` with a legend panel on its right: a colour swatch and the name of every class in ``label``,
    so that a parse read on its own says which colour is which class."""
    tinted = overlay(image, label, spec, alpha)
    shown = [c for c in np.unique(np.asarray(label)) if c not in (BACKGROUND, IGNORE_INDEX)]
    font = ImageFont.load_default()
    row, pad, swatch = 16, 6, 12
    names = ["background (no tint)"] + [spec.class_name(int(c)) for c in shown]
    width = pad * 3 + swatch + max(int(font.getlength(n)) for n in names)
    height = max(tinted.shape[0], pad * 2 + row * len(names))
    canvas = Image.new("RGB", (tinted.shape[1] + width, height), "white")
    canvas.paste(Image.fromarray(tinted), (0, 0))
    draw = ImageDraw.Draw(canvas)
    palette = label_palette(spec)
    for i, (cid, name) in enumerate(zip([BACKGROUND, *shown], names)):
        x, y = tinted.shape[1] + pad, pad + i * row
        colour = (255, 255, 255) if cid == BACKGROUND else tuple(int(v) for v in palette[int(cid)])
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
