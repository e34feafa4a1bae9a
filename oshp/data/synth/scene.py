"""Scenes behind and in front of the people: a wall and floor, clutter (some of it clothing-coloured), occluders
labelled background."""

from __future__ import annotations

import math

import numpy as np

from ...core.labels import BACKGROUND
from .clothing import CLOTHING_FAMILIES
from .draw import Canvas, Material, hsv_colour, random_material, random_pattern, second_colour



# ============================================================================ background
def draw_background(rng: np.random.Generator, cv: Canvas, clothing_distractors: bool = True) -> None:
    """A room or street-like scene: base colour, optional floor, clutter, clothing-coloured distractors.

    ``clothing_distractors=False`` keeps every clutter shape generic (the pretraining images hold nothing human).
    """
    size = cv.size
    u = size / 10
    base = hsv_colour(rng, (0, 1), (0, 0.35), (0.3, 0.92))
    wall = Material(rgb=base, rgb2=second_colour(rng, base), shade=0, grain=rng.uniform(2, 6),
                     **random_pattern(rng, {"plain": 0.7, "stripes": 0.15, "twill": 0.15}, u * 2))
    if wall.pattern == "twill":
        wall.period = rng.uniform(2, 4)
    cv.image[:] = wall.texture(cv.xx, cv.yy) * (1 - 0.25 * cv.yy / size)[..., None]
    if rng.random() < 0.6:
        horizon = rng.uniform(0.55, 0.85) * size
        floor = Material(rgb=hsv_colour(rng, (0, 1), (0, 0.4), (0.2, 0.8)), rgb2=hsv_colour(rng, (0, 1), (0, 0.4), (0.2, 0.8)),
                          shade=0, grain=3, **random_pattern(rng, {"plain": 0.6, "checks": 0.4}, u * 2))
        mask, d = cv.draw()
        d.rectangle([0, horizon, size, size], fill=255)
        cv.paint(mask, floor, None, None, 1)
    for _ in range(rng.integers(6, 19)):
        distractor = rng.random() < 0.3
        if distractor and clothing_distractors:
            mat = CLOTHING_FAMILIES[rng.integers(len(CLOTHING_FAMILIES))](rng, u)
        else:
            rgb = np.clip(base + rng.normal(0, 45, 3), 0, 255).astype(np.float32) if rng.random() < 0.6 else \
                hsv_colour(rng, (0, 1), (0, 0.6), (0.1, 0.95))
            mat = random_material(rng, rgb, u, {"plain": 0.6, "stripes": 0.2, "checks": 0.1, "dots": 0.1}, shade=(0, 0.2))
        random_shape(rng, cv, mat, size)


def random_shape(rng: np.random.Generator, cv: Canvas, mat: Material, size: int) -> None:
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


def occluder(rng: np.random.Generator, cv: Canvas) -> None:
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
    cv.paint(mask, mat, BACKGROUND, ("x", size / 2, size / 2), 0.8)
