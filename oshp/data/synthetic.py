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

import colorsys
import math
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from .layout import (
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
from ..core.errors import DatasetError
from .vocab import ATR, flip_labels
from .palette import label_palette

GENERATOR = "oshp synth"
VERSION = 1
MIN_SIZE = 32
SPLIT_CODES = {"train": 1, "test": 2}
JPEG_QUALITY = 95

# Raw ATR ids (see vocab._ATR_RAW).
BG, HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT = range(9)
LEFT_SHOE, RIGHT_SHOE, FACE, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, SCARF = range(9, 18)

# A person faces the viewer, so the person's left side (+1) is on the image's right.
_ARM = {+1: LEFT_ARM, -1: RIGHT_ARM}
_LEG = {+1: LEFT_LEG, -1: RIGHT_LEG}
_SHOE = {+1: LEFT_SHOE, -1: RIGHT_SHOE}

_HEIGHT_UNITS = 7.1  # a person is about 7 head heights tall (slightly big-headed, so small parts stay visible)


# ============================================================================ colours and materials
def hsv_colour(rng: np.random.Generator, h, s, v) -> np.ndarray:
    """RGB (0..255 floats) from HSV ranges; a scalar range is (lo, hi), hue wraps around."""
    hh = rng.uniform(*h) % 1.0
    return np.array(colorsys.hsv_to_rgb(hh, rng.uniform(*s), rng.uniform(*v)), np.float32) * 255


@dataclass
class Material:
    """A surface: base colour, an optional second colour laid out by a pattern, shading and grain."""

    rgb: np.ndarray
    rgb2: np.ndarray
    pattern: str = "plain"  # plain | stripes | checks | dots | twill | strands | pleats
    period: float = 6.0  # pattern period in pixels
    angle: float = 0.0
    width: float = 0.4  # stripe duty cycle or dot radius (fraction of the period)
    phase: tuple[float, float] = (0.0, 0.0)
    shade: float = 0.3  # how much darker the edges of a rounded part are
    grain: float = 4.0  # amplitude of the pixel noise

    def texture(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        base = np.broadcast_to(self.rgb, xx.shape + (3,))
        if self.pattern == "plain":
            return base.astype(np.float32, copy=True)
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (xx * c + yy * s) / self.period + self.phase[0]
        if self.pattern in ("twill", "strands", "pleats"):
            depth = {"twill": 0.07, "strands": 0.14, "pleats": 0.12}[self.pattern]
            return base * (1 + depth * np.sin(2 * np.pi * u))[..., None]
        v = (yy * c - xx * s) / self.period + self.phase[1]
        fu, fv = u - np.floor(u), v - np.floor(v)
        if self.pattern == "stripes":
            mix = (fu < self.width).astype(np.float32)
        elif self.pattern == "checks":  # gingham: half tone where one band lies, full where both cross
            mix = ((fu < self.width).astype(np.float32) + (fv < self.width)) * 0.5
        else:  # dots
            mix = (((fu - 0.5) ** 2 + (fv - 0.5) ** 2) < self.width**2).astype(np.float32)
        return base + mix[..., None] * (self.rgb2 - self.rgb)


def _pattern(rng: np.random.Generator, probs: dict[str, float], u: float) -> dict:
    """Pattern kind and geometry scaled to the person (``u`` = head height in pixels)."""
    kinds = list(probs)
    kind = kinds[rng.choice(len(kinds), p=np.array(list(probs.values())) / sum(probs.values()))]
    period = max(2.5, u * rng.uniform(0.18, 0.45))
    angle = 0.0
    if kind == "stripes":
        angle = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.12) if rng.random() < 0.8 else rng.uniform(0, math.pi)
    elif kind in ("checks", "dots"):
        angle = rng.choice([0.0, math.pi / 4]) + rng.normal(0, 0.05)
    width = {"stripes": rng.uniform(0.3, 0.6), "checks": rng.uniform(0.3, 0.5), "dots": rng.uniform(0.15, 0.3)}
    return {
        "pattern": kind,
        "period": period,
        "angle": angle,
        "width": width.get(kind, 0.4),
        "phase": (rng.random(), rng.random()),
    }


def _second_colour(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """A pattern's second colour: a contrasting light/dark tone or another hue."""
    r = rng.random()
    if r < 0.4:
        return np.full(3, 235.0 if rgb.mean() < 128 else 25.0, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    if r < 0.7:
        return np.clip(rgb * rng.choice([0.45, 1.6]), 0, 255).astype(np.float32)
    return hsv_colour(rng, (0, 1), (0.3, 0.9), (0.3, 0.95))


def random_material(rng: np.random.Generator, rgb: np.ndarray, u: float, patterns: dict[str, float],
              shade: tuple[float, float] = (0.2, 0.4), grain: tuple[float, float] = (2, 7)) -> Material:
    spec = _pattern(rng, patterns, u)
    if spec["pattern"] == "strands":
        spec.update(period=max(1.5, u * rng.uniform(0.05, 0.1)), angle=rng.normal(0, 0.1))  # vertical strands
    if spec["pattern"] == "twill":
        spec.update(period=rng.uniform(1.8, 3.0), angle=math.pi / 4)
    if spec["pattern"] == "pleats":
        spec.update(period=max(3.0, u * rng.uniform(0.12, 0.3)), angle=0.0)
    return Material(rgb=rgb, rgb2=_second_colour(rng, rgb), shade=rng.uniform(*shade), grain=rng.uniform(*grain), **spec)


# Each class has its own colour family and pattern mix; skirt and dress deliberately share theirs.
def _skin(rng, u):
    v = rng.uniform(0.35, 0.97)
    rgb = hsv_colour(rng, (0.03, 0.085), (0.62 - 0.4 * v, 0.75 - 0.35 * v), (v, v))
    return random_material(rng, rgb, u, {"plain": 1}, shade=(0.15, 0.3), grain=(1, 3))


def _hair(rng, u):
    kind = rng.choice(6, p=[0.3, 0.25, 0.15, 0.15, 0.08, 0.07])
    family = [
        ((0, 1), (0, 0.3), (0.05, 0.16)),  # black
        ((0.05, 0.08), (0.5, 0.75), (0.16, 0.3)),  # dark brown
        ((0.06, 0.09), (0.45, 0.7), (0.32, 0.5)),  # brown
        ((0.11, 0.14), (0.35, 0.6), (0.68, 0.9)),  # blonde
        ((0.02, 0.05), (0.6, 0.85), (0.4, 0.65)),  # auburn / red
        ((0, 1), (0, 0.08), (0.55, 0.85)),  # grey
    ][kind]
    return random_material(rng, hsv_colour(rng, *family), u, {"strands": 0.8, "plain": 0.2}, shade=(0.25, 0.45), grain=(2, 5))


def _upper(rng, u):
    if rng.random() < 0.35:  # white, grey, black
        rgb = hsv_colour(rng, (0, 1), (0, 0.12), (0.08, 0.95))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.3, 0.9), (0.3, 0.95))
    return random_material(rng, rgb, u, {"plain": 0.5, "stripes": 0.25, "checks": 0.1, "dots": 0.15})


def _skirt_dress(rng, u):
    r = rng.random()
    if r < 0.45:  # reds, pinks, purples
        rgb = hsv_colour(rng, (0.78, 1.04), (0.35, 0.85), (0.35, 0.95))
    elif r < 0.7:
        rgb = hsv_colour(rng, (0, 1), (0.35, 0.85), (0.25, 0.9))
    else:  # black, navy, white
        rgb = hsv_colour(rng, (0.55, 0.7), (0, 0.5), (0.08, 0.95))
    return random_material(rng, rgb, u, {"plain": 0.4, "dots": 0.22, "stripes": 0.13, "checks": 0.1, "pleats": 0.15})


def _pants(rng, u):
    r = rng.random()
    if r < 0.5:  # denim
        return random_material(rng, hsv_colour(rng, (0.57, 0.63), (0.35, 0.7), (0.25, 0.6)), u, {"twill": 1}, grain=(4, 8))
    if r < 0.75:
        rgb = hsv_colour(rng, (0, 1), (0, 0.1), (0.08, 0.5))
    elif r < 0.9:  # khaki, beige
        rgb = hsv_colour(rng, (0.08, 0.13), (0.22, 0.5), (0.5, 0.8))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.4, 0.7), (0.3, 0.6))
    return random_material(rng, rgb, u, {"plain": 0.9, "checks": 0.1})


def _shoe(rng, u):
    r = rng.random()
    if r < 0.5:
        rgb = hsv_colour(rng, (0, 1), (0, 0.3), (0.04, 0.2))
    elif r < 0.75:
        rgb = hsv_colour(rng, (0, 1), (0, 0.08), (0.85, 1.0))
    elif r < 0.9:
        rgb = hsv_colour(rng, (0.04, 0.08), (0.5, 0.8), (0.22, 0.45))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.5, 0.9), (0.4, 0.9))
    return random_material(rng, rgb, u, {"plain": 1}, shade=(0.3, 0.5))


def _hat(rng, u):
    r = rng.random()
    if r < 0.35:
        rgb = hsv_colour(rng, (0, 1), (0, 0.2), (0.05, 0.35))
    elif r < 0.6:  # straw, beige
        rgb = hsv_colour(rng, (0.09, 0.14), (0.25, 0.55), (0.6, 0.9))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.4, 0.9), (0.35, 0.9))
    return random_material(rng, rgb, u, {"plain": 0.65, "stripes": 0.15, "checks": 0.1, "twill": 0.1}, shade=(0.3, 0.45))


def _sunglasses(rng, u):
    return random_material(rng, hsv_colour(rng, (0, 1), (0.1, 0.6), (0.03, 0.18)), u, {"plain": 1}, shade=(0, 0.1), grain=(1, 3))


def _belt(rng, u):
    r = rng.random()
    rgb = hsv_colour(rng, (0.04, 0.08), (0.5, 0.8), (0.15, 0.4)) if r < 0.6 else hsv_colour(rng, (0, 1), (0, 0.5), (0.03, 0.3))
    return random_material(rng, rgb, u, {"plain": 1}, shade=(0.1, 0.2))


def _bag(rng, u):
    r = rng.random()
    if r < 0.3:
        rgb = hsv_colour(rng, (0, 1), (0, 0.2), (0.04, 0.2))
    elif r < 0.7:  # leather browns and tan
        rgb = hsv_colour(rng, (0.04, 0.1), (0.45, 0.85), (0.25, 0.75))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.5, 0.9), (0.35, 0.85))
    return random_material(rng, rgb, u, {"plain": 0.85, "checks": 0.15}, shade=(0.3, 0.5))


def _scarf(rng, u):
    return random_material(rng, hsv_colour(rng, (0, 1), (0.2, 0.9), (0.25, 0.95)), u, {"stripes": 0.4, "checks": 0.3, "plain": 0.3})


_CLOTHING_FAMILIES = (_upper, _skirt_dress, _pants, _hat, _bag, _scarf, _skin, _hair, _shoe)


# ============================================================================ canvas
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


class Canvas:
    """Image and label map painted part by part; later parts occlude earlier ones."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.image = np.zeros((size, size, 3), np.float32)
        self.label = np.zeros((size, size), np.uint8)
        self.xx, self.yy = _grid(size)
        self.noise = rng.standard_normal((size, size)).astype(np.float32)

    def draw(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        mask = Image.new("L", (self.size, self.size), 0)
        return mask, ImageDraw.Draw(mask)

    def paint(self, mask: Image.Image, material: Material, cls: int | None, shade=None, outline: float = 0.8) -> None:
        """Fill ``mask`` with the material and (unless ``cls`` is None, a detail) the class id.

        ``shade`` rounds the part: ('axis', p0, p1, r) for limbs, ('ellipse', cx, cy, rx, ry) for
        heads, ('x', cx, half_width) for torsos and skirts; None leaves it flat.
        """
        m = np.asarray(mask) > 0
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            return
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        m = m[y0:y1, x0:x1]
        xx, yy = self.xx[y0:y1, x0:x1], self.yy[y0:y1, x0:x1]
        tex = material.texture(xx, yy)
        factor = shading(shade, xx, yy, material.shade)
        if outline < 1:  # darken the rim so neighbouring parts of similar colour stay separable
            inner = m.copy()
            inner[1:] &= m[:-1]
            inner[:-1] &= m[1:]
            inner[:, 1:] &= m[:, :-1]
            inner[:, :-1] &= m[:, 1:]
            factor = factor * np.where(m & ~inner, outline, 1.0).astype(np.float32)
        tex = tex * factor[..., None] + material.grain * self.noise[y0:y1, x0:x1, None]
        self.image[y0:y1, x0:x1][m] = tex[m]
        if cls is not None:
            self.label[y0:y1, x0:x1][m] = cls


def shading(shade, xx: np.ndarray, yy: np.ndarray, strength: float) -> np.ndarray:
    if shade is None:
        return np.ones(xx.shape, np.float32)
    kind = shade[0]
    if kind == "axis":
        (ax, ay), (bx, by), r = shade[1], shade[2], max(shade[3], 0.5)
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        d2 = ((xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2) / (r * r)
    elif kind == "ellipse":
        _, cx, cy, rx, ry = shade
        d2 = ((xx - cx) / max(rx, 0.5)) ** 2 + ((yy - cy) / max(ry, 0.5)) ** 2
    else:  # "x"
        _, cx, hw = shade
        d2 = ((xx - cx) / max(hw, 0.5)) ** 2
    return (1.0 - strength * np.minimum(d2, 1.3)).astype(np.float32)


# ============================================================================ primitives
def _capsule(draw: ImageDraw.ImageDraw, p0, p1, r0: float, r1: float) -> None:
    """A tapered limb from p0 (radius r0) to p1 (radius r1) with round ends."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(dx, dy) or 1e-6
    nx, ny = -dy / length, dx / length
    draw.polygon(
        [(p0[0] + nx * r0, p0[1] + ny * r0), (p1[0] + nx * r1, p1[1] + ny * r1),
         (p1[0] - nx * r1, p1[1] - ny * r1), (p0[0] - nx * r0, p0[1] - ny * r0)],
        fill=255,
    )
    _ellipse(draw, p0, r0, r0)
    _ellipse(draw, p1, r1, r1)


def _ellipse(draw: ImageDraw.ImageDraw, c, rx: float, ry: float) -> None:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=255)


def _lerp(a, b, t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


# ============================================================================ people
class _Person:
    """One front-facing person: a 2-D skeleton in head units, an outfit and its materials.

    ``P(x, y)`` maps body coordinates (x to the person's left, y down from the top of the head, in head
    heights) to image pixels; since the person faces the viewer, the person's left is the image's right.
    """

    def __init__(self, rng: np.random.Generator, canvas: Canvas, cx: float, top: float, height: float):
        self.rng, self.cv = rng, canvas
        self.u = height / _HEIGHT_UNITS
        self.cx, self.top = cx, top
        lean = rng.normal(0, 0.04)
        self.cos, self.sin = math.cos(lean), math.sin(lean)
        u = self.u
        # body build
        self.sw = rng.uniform(0.78, 1.05)  # shoulder half-width
        self.ww = rng.uniform(0.5, 0.64)  # waist
        self.hw = rng.uniform(0.64, 0.8)  # hips
        self.arm_r = rng.uniform(0.19, 0.24)
        self.leg_r = rng.uniform(0.31, 0.38)
        self.skin = _skin(rng, u)
        self.hair = _hair(rng, u)
        self._pose()
        self._outfit()

    # ---------------------------------------------------------------- geometry
    def P(self, x: float, y: float) -> tuple[float, float]:
        y -= _HEIGHT_UNITS  # lean pivots around the feet
        xr, yr = x * self.cos - y * self.sin, x * self.sin + y * self.cos
        return (self.cx + xr * self.u, self.top + (yr + _HEIGHT_UNITS) * self.u)

    def R(self, r: float) -> float:
        return r * self.u

    def _pose(self) -> None:
        rng = self.rng
        self.joints: dict[str, tuple[float, float]] = {}
        modes = ("down", "akimbo", "raised", "front", "out")
        for side in (+1, -1):
            mode = modes[rng.choice(5, p=[0.5, 0.1, 0.14, 0.16, 0.1])]
            lo1, hi1, lo2, hi2 = {
                "down": (5, 22, -25, 10), "akimbo": (30, 50, -135, -100), "raised": (60, 165, -45, 45),
                "front": (0, 14, -115, -70), "out": (25, 60, -20, 25),
            }[mode]
            a1 = math.radians(rng.uniform(lo1, hi1))
            a2 = a1 + math.radians(rng.uniform(lo2, hi2))
            sh = (side * (self.sw - 0.17), 1.5)
            el = (sh[0] + side * 1.25 * math.sin(a1), sh[1] + 1.25 * math.cos(a1))
            wr = (el[0] + side * 1.1 * math.sin(a2), el[1] + 1.1 * math.cos(a2))
            hd = (wr[0] + side * 0.22 * math.sin(a2), wr[1] + 0.22 * math.cos(a2))
            self.joints.update({f"sh{side}": sh, f"el{side}": el, f"wr{side}": wr, f"hd{side}": hd})
        walk = rng.random() < 0.25
        for side in (+1, -1):
            f1 = math.radians(rng.uniform(-3, 12) + (side * rng.uniform(8, 18) if walk else 0))
            f2 = f1 + math.radians(rng.uniform(-6, 6))
            hip = (side * self.hw * 0.52, 3.6)
            kn = (hip[0] + side * 1.65 * math.sin(f1), hip[1] + 1.65 * math.cos(f1))
            an = (kn[0] + side * 1.55 * math.sin(f2), kn[1] + 1.55 * math.cos(f2))
            self.joints.update({f"hip{side}": hip, f"kn{side}": kn, f"an{side}": an})
        self.arms_behind = {side: rng.random() < 0.08 for side in (+1, -1)}

    def _outfit(self) -> None:
        rng, u = self.rng, self.u
        r = rng.random()
        self.lower = "dress" if r < 0.22 else "skirt" if r < 0.44 else "pants" if r < 0.92 else "tunic"
        self.pants_long = rng.random() < 0.72
        self.shorts_len = rng.uniform(0.3, 0.75)
        if rng.random() < 0.17:  # maxi: down to the ankles
            self.skirt_hem = rng.uniform(6.6, 7.0)
        else:
            self.skirt_hem = rng.uniform(4.1, 6.0) if self.lower == "skirt" else rng.uniform(4.4, 6.4)
        self.flare = rng.uniform(0.1, 0.9)
        self.boots = rng.random() < 0.12
        self.jacket = self.lower == "dress" and rng.random() < 0.15
        self.belt = self.lower != "tunic" and rng.random() < 0.13
        self.tucked = self.belt or rng.random() < 0.3
        self.upper_hem = rng.uniform(4.0, 4.5) if self.lower == "tunic" else (3.0 if self.tucked else rng.uniform(3.35, 3.85))
        self.sleeves = rng.choice(["short", "long", "none"], p=[0.45, 0.4, 0.15])
        if self.lower == "dress":
            self.sleeves = "long" if self.jacket else rng.choice(["none", "short", "long"], p=[0.5, 0.35, 0.15])
        self.short_sleeve = rng.uniform(0.35, 0.85)
        self.hands_hidden = self.sleeves == "long" and rng.random() < 0.35  # in pockets, behind the back
        self.vneck = rng.random() < 0.3
        self.hat = rng.random() < 0.21
        self.hat_kind = rng.choice(["cap", "beanie", "sunhat"])
        self.sunglasses = rng.random() < 0.13
        self.scarf = rng.random() < 0.08
        self.bag = rng.random() < 0.24
        self.bag_kind = rng.choice(["shoulder", "hand", "backpack"], p=[0.55, 0.25, 0.2])
        self.bag_side = int(rng.choice([-1, 1]))
        self.hair_style = rng.choice(["short", "long", "bun", "bald"], p=[0.42, 0.45, 0.1, 0.03])
        self.hair_len = rng.uniform(1.6, 2.8)
        self.mat = {
            "upper": _upper(rng, u), "sd": _skirt_dress(rng, u), "pants": _pants(rng, u), "shoe": _shoe(rng, u),
            "hat": _hat(rng, u), "sun": _sunglasses(rng, u), "belt": _belt(rng, u), "bag": _bag(rng, u),
            "scarf": _scarf(rng, u),
        }

    # ---------------------------------------------------------------- drawing
    def render(self) -> None:
        """Back to front, so that the draw order gives plausible occlusion."""
        if self.hair_style == "long":
            self._long_hair_back()
        if self.bag and self.bag_kind == "backpack":
            self._backpack_body()
        for side in (+1, -1):
            if self.arms_behind[side]:
                self._arm(side)
        self._legs()
        self._lower_garment()
        self._neck()
        self._torso()
        if self.belt:
            self._belt()
        if self.bag:
            self._bag()
        if self.hair_style == "long":
            self._long_hair_front()
        for side in (+1, -1):
            if not self.arms_behind[side]:
                self._arm(side)
        if self.bag and self.bag_kind == "hand":
            self._handbag()
        if self.scarf:
            self._scarf()
        self._head()

    def _poly(self, pts, material, cls, shade=None, outline=0.8) -> None:
        mask, d = self.cv.draw()
        d.polygon([self.P(*p) for p in pts], fill=255)
        self.cv.paint(mask, material, cls, shade, outline)

    def _limb(self, pts_radii, material, cls, outline=0.8) -> None:
        """Consecutive capsules through (point, radius) pairs in body units, rounded around their overall axis."""
        mask, d = self.cv.draw()
        pts = [(self.P(*p), self.R(r)) for p, r in pts_radii]
        for (a, ra), (b, rb) in zip(pts, pts[1:]):
            _capsule(d, a, b, ra, rb)
        self.cv.paint(mask, material, cls, ("axis", pts[0][0], pts[-1][0], max(r for _, r in pts)), outline)

    def _x_shade(self, half: float):
        return ("x", self.P(0, 2.5)[0], self.R(half))

    def _long_hair_back(self) -> None:
        y = 0.5 + self.hair_len
        self._poly([(-0.44, 0.4), (0.44, 0.4), (0.6, y - 0.3), (0.4, y), (-0.4, y), (-0.6, y - 0.3)],
                   self.hair, HAIR, self._x_shade(0.6))

    def _long_hair_front(self) -> None:
        y = min(0.5 + self.hair_len, 2.6)
        for s in (+1, -1):
            self._limb([((s * 0.36, 0.55), 0.1), ((s * 0.5, 1.2), 0.15), ((s * 0.5, y), 0.1)], self.hair, HAIR)

    def _legs(self) -> None:
        j = self.joints
        for s in (+1, -1):
            self._limb([(j[f"hip{s}"], self.leg_r), (j[f"kn{s}"], self.leg_r * 0.7), (j[f"an{s}"], self.leg_r * 0.45)],
                       self.skin, _LEG[s], outline=0.85)
        for s in (+1, -1):
            an = j[f"an{s}"]
            top = (an[0], an[1] - (1.0 if self.boots else 0.08))
            pts = [(top[0] - 0.2, top[1]), (top[0] + 0.2, top[1]), (an[0] + s * 0.05 + 0.24, an[1] + 0.3),
                   (an[0] + s * 0.1 + 0.2, an[1] + 0.42), (an[0] + s * 0.1 - 0.2, an[1] + 0.42),
                   (an[0] + s * 0.05 - 0.24, an[1] + 0.3)]
            self._poly(pts, self.mat["shoe"], _SHOE[s], ("x", self.P(an[0], an[1])[0], self.R(0.25)), outline=0.7)

    def _lower_garment(self) -> None:
        j = self.joints
        if self.lower == "pants":
            mat = self.mat["pants"]
            for s in (+1, -1):
                hip, kn, an = j[f"hip{s}"], j[f"kn{s}"], j[f"an{s}"]
                if self.pants_long:
                    chain = [(hip, self.leg_r + 0.08), (kn, self.leg_r * 0.7 + 0.08), ((an[0], an[1] + 0.05), 0.24)]
                else:
                    chain = [(hip, self.leg_r + 0.08), (_lerp(hip, kn, self.shorts_len), self.leg_r * 0.9 + 0.07)]
                self._limb(chain, mat, PANTS)
            self._poly([(-self.ww, 2.95), (self.ww, 2.95), (self.hw, 3.45), (self.hw * 0.55, 3.85), (0, 3.8),
                        (-self.hw * 0.55, 3.85), (-self.hw, 3.45)], mat, PANTS, self._x_shade(self.hw), outline=1)
        elif self.lower in ("skirt", "dress"):
            cls = SKIRT if self.lower == "skirt" else DRESS
            hem, fl = self.skirt_hem, self.hw + self.flare * (self.skirt_hem - 3) / 2.2
            self._poly([(-self.ww, 2.9), (self.ww, 2.9), (self.hw + 0.05, 3.5), (fl, hem), (fl * 0.5, hem + 0.1),
                        (0, hem + 0.12), (-fl * 0.5, hem + 0.1), (-fl, hem), (-self.hw - 0.05, 3.5)],
                       self.mat["sd"], cls, self._x_shade(fl))

    def _neck(self) -> None:
        pts = [(-0.17, 0.85), (0.17, 0.85), (0.19, 1.4), (-0.19, 1.4)]
        if self.vneck or (self.lower == "dress" and self.sleeves == "none" and not self.jacket):
            pts = [(-0.17, 0.85), (0.17, 0.85), (0.2, 1.3), (0.35, 1.5), (0, 2.0), (-0.35, 1.5), (-0.2, 1.3)]
        self._poly(pts, self.skin, FACE, ("x", self.P(0, 1)[0], self.R(0.25)), outline=1)

    def _torso(self) -> None:
        sw, ww = self.sw, self.ww
        open_neck = self.vneck or (self.lower == "dress" and self.sleeves == "none")
        neck = [(0.22, 1.28), (0, 1.9 if open_neck else 1.38), (-0.22, 1.28)]
        if self.lower == "dress":
            hem, fl = self.skirt_hem, self.hw + self.flare * (self.skirt_hem - 3) / 2.2
            body = [(sw * 0.92, 1.42), (sw - 0.12, 2.05), (ww, 2.9), (self.hw + 0.05, 3.5), (fl, hem),
                    (0, hem + 0.12), (-fl, hem), (-self.hw - 0.05, 3.5), (-ww, 2.9), (-(sw - 0.12), 2.05),
                    (-sw * 0.92, 1.42)]
            self._poly(neck + body, self.mat["sd"], DRESS, self._x_shade(sw))
            if self.jacket:
                for s in (+1, -1):
                    self._poly([(s * 0.3, 1.3), (s * sw, 1.42), (s * (sw - 0.08), 2.05), (s * (ww + 0.08), 2.9),
                                (s * (self.hw + 0.08), 3.7), (s * 0.25, 3.7), (s * 0.2, 1.9)],
                               self.mat["upper"], UPPER, self._x_shade(sw))
            return
        hem = self.upper_hem
        hem_w = ww + (self.hw - ww) * min(1.0, (hem - 2.9) / 0.7) + (0.1 if hem > 3.9 else 0)
        body = [(sw, 1.42), (sw - 0.1, 2.05), (ww + 0.02, 2.9), (hem_w, hem), (-hem_w, hem), (-(ww + 0.02), 2.9),
                (-(sw - 0.1), 2.05), (-sw, 1.42)]
        self._poly(neck + body, self.mat["upper"], UPPER, self._x_shade(sw))

    def _belt(self) -> None:
        w = self.ww + 0.04
        self._poly([(-w, 2.86), (w, 2.86), (w, 3.05), (-w, 3.05)], self.mat["belt"], BELT, None, outline=0.7)
        buckle = Material(rgb=np.array([200, 180, 110], np.float32), rgb2=np.zeros(3, np.float32), shade=0.3, grain=3)
        self._poly([(-0.1, 2.84), (0.1, 2.84), (0.1, 3.07), (-0.1, 3.07)], buckle, BELT, None, outline=0.6)

    def _bag(self) -> None:
        s, mat = self.bag_side, self.mat["bag"]
        if self.bag_kind == "backpack":
            for x in (-0.45, 0.45):
                self._limb([((x, 1.38), 0.09), ((x * 1.2, 2.5), 0.09)], mat, BAG, outline=0.75)
            return
        if self.bag_kind != "shoulder":
            return
        cx, cy = s * (self.hw + 0.4), 3.75
        self._limb([((-s * (self.sw - 0.35), 1.38), 0.07), ((cx, cy - 0.35), 0.07)], mat, BAG, outline=0.75)
        self._poly([(cx - 0.45, cy - 0.35), (cx + 0.45, cy - 0.35), (cx + 0.5, cy + 0.4), (cx - 0.5, cy + 0.4)],
                   mat, BAG, ("x", self.P(cx, cy)[0], self.R(0.5)), outline=0.7)

    def _backpack_body(self) -> None:
        w = self.sw + 0.12
        self._poly([(-w, 1.6), (w, 1.6), (w + 0.05, 3.3), (-w - 0.05, 3.3)], self.mat["bag"], BAG, self._x_shade(w))

    def _handbag(self) -> None:
        hd = self.joints[f"hd{self.bag_side}"]
        if hd[1] < 2.6:  # a raised hand does not carry a bag
            return
        mat = self.mat["bag"]
        top = (hd[0], hd[1] + 0.3)
        mask, d = self.cv.draw()
        r = self.R(0.3)
        c = self.P(hd[0], hd[1] + 0.12)
        d.arc([c[0] - r, c[1] - r, c[0] + r, c[1] + r], 180, 360, fill=255, width=max(1, int(self.R(0.07))))
        self.cv.paint(mask, mat, BAG, None, 1)
        self._poly([(top[0] - 0.4, top[1]), (top[0] + 0.4, top[1]), (top[0] + 0.45, top[1] + 0.65),
                    (top[0] - 0.45, top[1] + 0.65)], mat, BAG, ("x", self.P(*top)[0], self.R(0.45)), outline=0.7)

    def _arm(self, s: int) -> None:
        j = self.joints
        sh, el, wr, hd = j[f"sh{s}"], j[f"el{s}"], j[f"wr{s}"], j[f"hd{s}"]
        r = self.arm_r
        if not self.hands_hidden:
            self._limb([(sh, r), (el, r * 0.82), (wr, r * 0.65)], self.skin, _ARM[s], outline=0.85)
            mask, d = self.cv.draw()
            c = self.P(*hd)
            _ellipse(d, c, self.R(0.17), self.R(0.17))
            self.cv.paint(mask, self.skin, _ARM[s], ("ellipse", c[0], c[1], self.R(0.17), self.R(0.17)), 0.85)
        if self.sleeves == "none" and not self.jacket:
            return
        cls, mat = (UPPER, self.mat["upper"]) if (self.lower != "dress" or self.jacket) else (DRESS, self.mat["sd"])
        if self.sleeves == "long" or self.jacket:
            chain = [(sh, r + 0.07), (el, r * 0.82 + 0.07), (wr, r * 0.65 + 0.07)]
        else:
            chain = [(sh, r + 0.06), (_lerp(sh, el, self.short_sleeve), r * 0.9 + 0.07)]
        self._limb(chain, mat, cls)

    def _scarf(self) -> None:
        mat = self.mat["scarf"]
        self._limb([((-0.35, 1.2), 0.17), ((0, 1.42), 0.2), ((0.35, 1.2), 0.17)], mat, SCARF, outline=0.75)
        x = self.rng.uniform(-0.3, 0.3)
        self._poly([(x - 0.15, 1.3), (x + 0.15, 1.3), (x + 0.19, 2.7), (x - 0.19, 2.7)], mat, SCARF, None, 0.75)

    def _head(self) -> None:
        u, skin, hair = self.u, self.skin, self.hair
        head_c, rx, ry = (0.0, 0.52), 0.37, 0.48
        c = self.P(*head_c)
        if self.hair_style != "bald":  # the hair mass around the skull, later covered by the face
            mask, d = self.cv.draw()
            _ellipse(d, self.P(0, 0.45), self.R(rx + 0.07), self.R(ry + 0.02))
            if self.hair_style == "bun":
                _ellipse(d, self.P(0, -0.05), self.R(0.2), self.R(0.16))
            self.cv.paint(mask, hair, HAIR, ("ellipse", c[0], c[1], self.R(rx + 0.07), self.R(ry)), 0.85)
        mask, d = self.cv.draw()
        _ellipse(d, c, self.R(rx), self.R(ry))
        for s in (+1, -1):  # ears
            _ellipse(d, self.P(s * rx, 0.58), self.R(0.07), self.R(0.11))
        self.cv.paint(mask, skin, FACE, ("ellipse", c[0], c[1], self.R(rx), self.R(ry)), 0.9)
        if self.hair_style != "bald":  # fringe over the forehead
            fringe = self.rng.uniform(0.2, 0.36)
            self._poly([(-rx - 0.03, 0.55), (-rx, 0.2), (-0.2, 0.0), (0.2, 0.0), (rx, 0.2), (rx + 0.03, 0.55),
                        (rx - 0.06, 0.45), (0.15, fringe), (-0.05, fringe + 0.03), (-rx + 0.06, 0.45)],
                       hair, HAIR, ("ellipse", c[0], c[1], self.R(rx + 0.07), self.R(ry)), 0.9)
        if u >= 8:  # facial features (image only): eyes, brows, mouth
            dark = Material(rgb=np.array([35, 25, 25], np.float32), rgb2=np.zeros(3, np.float32), shade=0, grain=2)
            lips = Material(rgb=np.clip(skin.rgb * [0.85, 0.55, 0.55], 0, 255).astype(np.float32),
                             rgb2=np.zeros(3, np.float32), shade=0, grain=2)
            mask, d = self.cv.draw()
            for s in (+1, -1):
                _ellipse(d, self.P(s * 0.15, 0.58), self.R(0.045), self.R(0.035))
                p, q = self.P(s * 0.07, 0.47), self.P(s * 0.24, 0.46)
                d.line([p, q], fill=255, width=max(1, int(u * 0.035)))
            self.cv.paint(mask, dark, None, None, 1)
            mask, d = self.cv.draw()
            _ellipse(d, self.P(0, 0.84), self.R(0.1), self.R(0.03))
            self.cv.paint(mask, lips, None, None, 1)
        if self.sunglasses:
            mask, d = self.cv.draw()
            for s in (+1, -1):
                _ellipse(d, self.P(s * 0.16, 0.58), max(1.5, self.R(0.14)), max(1.0, self.R(0.095)))
            d.line([self.P(-0.36, 0.54), self.P(0.36, 0.54)], fill=255, width=max(1, int(u * 0.04)))
            self.cv.paint(mask, self.mat["sun"], SUNGLASSES, None, 1)
        if self.hat:
            self._hat()

    def _hat(self) -> None:
        mat, kind = self.mat["hat"], self.hat_kind
        mask, d = self.cv.draw()
        c = self.P(0, 0.3)
        if kind == "cap":
            r = self.R(0.45)
            d.chord([c[0] - r, c[1] - self.R(0.42), c[0] + r, c[1] + self.R(0.42)], 180, 360, fill=255)
            _ellipse(d, self.P(0, 0.3), self.R(0.5), self.R(0.09))
        elif kind == "beanie":
            r = self.R(0.46)
            d.chord([c[0] - r, c[1] - self.R(0.5), c[0] + r, c[1] + self.R(0.5)], 180, 360, fill=255)
            d.polygon([self.P(-0.47, 0.22), self.P(0.47, 0.22), self.P(0.47, 0.38), self.P(-0.47, 0.38)], fill=255)
        else:  # sun hat: a wide brim and a crown
            w = self.rng.uniform(0.7, 0.9)
            _ellipse(d, self.P(0, 0.25), self.R(w), self.R(0.13))
            d.polygon([self.P(-0.36, -0.18), self.P(0.36, -0.18), self.P(0.4, 0.25), self.P(-0.4, 0.25)], fill=255)
        self.cv.paint(mask, mat, HAT, ("x", c[0], self.R(0.6)), 0.75)


# ============================================================================ background
def draw_background(rng: np.random.Generator, cv: Canvas, clothing_distractors: bool = True) -> None:
    """A room or street-like scene: base colour, optional floor, clutter, clothing-coloured distractors.

    ``clothing_distractors=False`` keeps every clutter shape generic (the pretraining images hold nothing human).
    """
    size = cv.size
    u = size / 10
    base = hsv_colour(rng, (0, 1), (0, 0.35), (0.3, 0.92))
    wall = Material(rgb=base, rgb2=_second_colour(rng, base), shade=0, grain=rng.uniform(2, 6),
                     **_pattern(rng, {"plain": 0.7, "stripes": 0.15, "twill": 0.15}, u * 2))
    if wall.pattern == "twill":
        wall.period = rng.uniform(2, 4)
    cv.image[:] = wall.texture(cv.xx, cv.yy) * (1 - 0.25 * cv.yy / size)[..., None]
    if rng.random() < 0.6:
        horizon = rng.uniform(0.55, 0.85) * size
        floor = Material(rgb=hsv_colour(rng, (0, 1), (0, 0.4), (0.2, 0.8)), rgb2=hsv_colour(rng, (0, 1), (0, 0.4), (0.2, 0.8)),
                          shade=0, grain=3, **_pattern(rng, {"plain": 0.6, "checks": 0.4}, u * 2))
        mask, d = cv.draw()
        d.rectangle([0, horizon, size, size], fill=255)
        cv.paint(mask, floor, None, None, 1)
    for _ in range(rng.integers(6, 19)):
        distractor = rng.random() < 0.3
        if distractor and clothing_distractors:
            mat = _CLOTHING_FAMILIES[rng.integers(len(_CLOTHING_FAMILIES))](rng, u)
        else:
            rgb = np.clip(base + rng.normal(0, 45, 3), 0, 255).astype(np.float32) if rng.random() < 0.6 else \
                hsv_colour(rng, (0, 1), (0, 0.6), (0.1, 0.95))
            mat = random_material(rng, rgb, u, {"plain": 0.6, "stripes": 0.2, "checks": 0.1, "dots": 0.1}, shade=(0, 0.2))
        _random_shape(rng, cv, mat, size)


def _random_shape(rng: np.random.Generator, cv: Canvas, mat: Material, size: int) -> None:
    mask, d = cv.draw()
    x, y = rng.uniform(-0.1, 1.0, 2) * size
    w, h = rng.uniform(0.05, 0.45, 2) * size
    kind = rng.integers(4)
    if kind == 0:
        d.rectangle([x, y, x + w, y + h], fill=255)
    elif kind == 1:
        d.ellipse([x, y, x + w, y + h], fill=255)
    elif kind == 2:
        n = rng.integers(3, 7)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        d.polygon([(x + w * (0.5 + 0.5 * math.cos(a)), y + h * (0.5 + 0.5 * math.sin(a))) for a in ang], fill=255)
    else:
        d.line([(x, y), (x + w * rng.choice([-1, 1]), y + h)], fill=255, width=int(rng.integers(1, max(2, size // 25))))
    cv.paint(mask, mat, None, ("x", x + w / 2, w / 2 + 1), 0.85)


def _occluder(rng: np.random.Generator, cv: Canvas) -> None:
    """Something in front of the people (a table, a railing, a pole): labelled background."""
    size = cv.size
    mat = random_material(rng, hsv_colour(rng, (0, 1), (0, 0.6), (0.15, 0.9)), size / 10, {"plain": 0.7, "twill": 0.3}, shade=(0.1, 0.3))
    mask, d = cv.draw()
    if rng.random() < 0.5:
        y = rng.uniform(0.7, 0.92) * size
        d.rectangle([-1, y, size, size], fill=255)
    else:
        x, w = rng.uniform(0, 1) * size, rng.uniform(0.03, 0.12) * size
        d.rectangle([x, -1, x + w, size], fill=255)
    cv.paint(mask, mat, BG, ("x", size / 2, size / 2), 0.8)


# ============================================================================ images
def render_person_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (HxWx3 uint8 RGB) with one to three people and its raw ATR label map (HxW uint8)."""
    if size < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE} px, not {size}")
    cv = Canvas(size, rng)
    draw_background(rng, cv)
    r = rng.random()
    n = 1 + (r < 0.2) + (r < 0.05)  # mostly one person, as in ATR: 80% one, 15% two, 5% three
    people = []
    framing = rng.random()
    main_h = size * rng.uniform(0.72, 0.97)
    if framing < 0.1:  # close-up: the feet (and sometimes knees) leave the frame
        main_h = size * rng.uniform(1.15, 1.6)
        main_top = size * rng.uniform(0.0, 0.06)
    elif framing < 0.14:  # the head (sometimes only its top) leaves the frame
        main_top = -rng.uniform(0.2, 1.3) * main_h / _HEIGHT_UNITS
    else:
        main_top = rng.uniform(0.01, max(0.011, 0.985 - main_h / size)) * size
    xs = np.sort(rng.uniform(0.15, 0.85, n)) if n > 1 else [rng.uniform(0.3, 0.7)]
    main = int(rng.integers(n))
    for i in range(n):
        if i == main:
            people.append((main_top + main_h, main_h, xs[i] * size, main_top))
        else:
            h = main_h * rng.uniform(0.5, 1.0)
            feet = min(main_top + main_h, size) - (main_h - h) * rng.uniform(0.1, 0.5)
            people.append((feet, h, xs[i] * size + rng.normal(0, 0.05) * size, feet - h))
    for _, h, cx, top in sorted(people):  # far (feet higher) first, so nearer people occlude them
        _Person(rng, cv, cx, top, h).render()
    if rng.random() < 0.1:
        _occluder(rng, cv)
    return finish_image(rng, cv), cv.label


def finish_image(rng: np.random.Generator, cv: Canvas) -> np.ndarray:
    """The painted canvas as a photo-like uint8 RGB image: slight blur, low-frequency lighting, sensor noise."""
    size = cv.size
    img = Image.fromarray(np.clip(cv.image, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7) * size / 192))
    # low-frequency lighting and sensor noise
    light = Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    gain = 1 + rng.uniform(0.05, 0.25) * (np.asarray(light, np.float32) / 127.5 - 1)
    out = np.asarray(img, np.float32) * gain[..., None] + rng.uniform(1, 4) * cv.noise[::-1, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)


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
