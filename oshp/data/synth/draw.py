"""Drawing primitives of the synthetic images: colours, materials (patterned, shaded, grained), a canvas that paints
labelled shapes, and the final camera-like finish. People, scenes and creatures are drawn with these."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter




JPEG_QUALITY = 95


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


def random_pattern(rng: np.random.Generator, probs: dict[str, float], u: float) -> dict:
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


def second_colour(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """A pattern's second colour: a contrasting light/dark tone or another hue."""
    r = rng.random()
    if r < 0.4:
        return np.full(3, 235.0 if rgb.mean() < 128 else 25.0, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    if r < 0.7:
        return np.clip(rgb * rng.choice([0.45, 1.6]), 0, 255).astype(np.float32)
    return hsv_colour(rng, (0, 1), (0.3, 0.9), (0.3, 0.95))


def random_material(rng: np.random.Generator, rgb: np.ndarray, u: float, patterns: dict[str, float],
              shade: tuple[float, float] = (0.2, 0.4), grain: tuple[float, float] = (2, 7)) -> Material:
    spec = random_pattern(rng, patterns, u)
    if spec["pattern"] == "strands":
        spec.update(period=max(1.5, u * rng.uniform(0.05, 0.1)), angle=rng.normal(0, 0.1))  # vertical strands
    if spec["pattern"] == "twill":
        spec.update(period=rng.uniform(1.8, 3.0), angle=math.pi / 4)
    if spec["pattern"] == "pleats":
        spec.update(period=max(3.0, u * rng.uniform(0.12, 0.3)), angle=0.0)
    return Material(rgb=rgb, rgb2=second_colour(rng, rgb), shade=rng.uniform(*shade), grain=rng.uniform(*grain), **spec)


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
def capsule(draw: ImageDraw.ImageDraw, p0, p1, r0: float, r1: float) -> None:
    """A tapered limb from p0 (radius r0) to p1 (radius r1) with round ends."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(dx, dy) or 1e-6
    nx, ny = -dy / length, dx / length
    draw.polygon(
        [(p0[0] + nx * r0, p0[1] + ny * r0), (p1[0] + nx * r1, p1[1] + ny * r1),
         (p1[0] - nx * r1, p1[1] - ny * r1), (p0[0] - nx * r0, p0[1] - ny * r0)],
        fill=255,
    )
    ellipse(draw, p0, r0, r0)
    ellipse(draw, p1, r1, r1)


def ellipse(draw: ImageDraw.ImageDraw, c, rx: float, ry: float) -> None:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=255)


def lerp(a, b, t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


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
