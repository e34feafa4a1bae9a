"""Procedural "creatures" for synthetic pretraining: many random part-based species, nothing human.

Why: the paper's EOP-Net starts from a COCO-pretrained backbone, whose features already tell object parts apart by
shape, layout and texture whatever their colour. Nothing can be downloaded here, so ``oshp pretrain`` learns such
features from these images instead: every species is a random tree of 3-6 parts (ellipses, boxes, wedges, polygons,
capsules) with its own proportions, layout and pattern habits; every individual of a species has its own colours,
pose and size. A pretraining episode asks to parse a query individual into the parts annotated on a support
individual of the same species, the one-shot task itself on classes that share nothing with people (no human
classes, nothing derived from the novel classes of any fold).

Every episode is drawn from a generator seeded with (seed, index), so a pretraining run is repeatable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .draw import Canvas, finish_image, hsv_colour, random_material
from .scene import draw_background

__all__ = ["Species", "make_species", "render_creature_scene", "creature_episode", "CreatureEpisodes"]

_KINDS = ("ellipse", "box", "wedge", "polygon", "capsule")
_PATTERNS = ("plain", "stripes", "checks", "dots", "twill", "pleats")


@dataclass
class Part:
    kind: str
    width: float  # in units of the individual's body size
    height: float
    parent: int  # index of the part it hangs from (-1: the root)
    direction: float  # where on the parent's rim it attaches (radians, parent frame)
    reach: float  # how far out of the parent's rim its centre sits (fraction of its own height)
    angle: float  # its own rotation (radians, relative to the parent's)
    outline: np.ndarray  # polygon vertices in the unit square [-0.5, 0.5]^2 (used by "polygon" and "wedge")
    hue: tuple[float, float] | None  # a hue range the species keeps for this part, or None (any colour)
    patterns: dict[str, float]


@dataclass
class Species:
    parts: list[Part]


def make_species(rng: np.random.Generator) -> Species:
    """A random part tree: proportions, layout, shapes, colour and pattern habits of one species."""
    n = int(rng.integers(3, 7))
    parts: list[Part] = []
    for i in range(n):
        kind = _KINDS[int(rng.integers(len(_KINDS)))]
        if i == 0:
            w, h = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.7)
        else:
            w, h = rng.uniform(0.08, 0.35), rng.uniform(0.1, 0.5)
        k = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.3, 0.5, k)
        outline = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        if kind == "wedge":  # a trapezoid: narrow top, wide bottom (or the reverse)
            top, bottom = rng.uniform(0.1, 0.5), rng.uniform(0.6, 1.0)
            if rng.random() < 0.5:
                top, bottom = bottom, top
            outline = np.array([[-top / 2, -0.5], [top / 2, -0.5], [bottom / 2, 0.5], [-bottom / 2, 0.5]])
        favourite = _PATTERNS[int(rng.integers(len(_PATTERNS)))]
        patterns = {p: 0.1 for p in _PATTERNS}
        patterns[favourite] = 1.0
        hue = None
        if rng.random() < 0.4:
            lo = rng.random()
            hue = (lo, lo + rng.uniform(0.05, 0.2))
        parts.append(Part(kind=kind, width=w, height=h, parent=int(rng.integers(i)) if i else -1,
                          direction=rng.uniform(0, 2 * np.pi), reach=rng.uniform(-0.2, 0.4),
                          angle=rng.normal(0, 0.6), outline=outline, hue=hue, patterns=patterns))
    return Species(parts)


def shape_points(part: Part, cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    if part.kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        local = np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], 1)
    elif part.kind == "box":
        local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif part.kind == "capsule":  # a rounded box (superellipse)
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        local = 0.5 * np.stack([np.sign(c) * np.abs(c) ** 0.5, np.sign(s) * np.abs(s) ** 0.5], 1)
    else:
        local = part.outline
    pts = local * [w, h]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw_individual(rng: np.random.Generator, cv: Canvas, species: Species, cx: float, cy: float, scale: float,
                     labels: list[int] | None) -> None:
    """Paint one individual centred near (cx, cy); part p gets ``labels[p]`` (None: unlabelled, i.e. background)."""
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    tilt = rng.normal(0, 0.25)
    placed: list[tuple[float, float, float, float, float]] = []  # cx, cy, w, h, angle
    for i, part in enumerate(species.parts):
        w = part.width * scale * rng.uniform(0.85, 1.15)
        h = part.height * scale * rng.uniform(0.85, 1.15)
        if part.parent < 0:
            angle, px, py = tilt, cx, cy
        else:
            pcx, pcy, pw, ph, pang = placed[part.parent]
            d = mirror * part.direction + rng.normal(0, 0.25)  # articulation: each individual has its own pose
            rim = np.array([0.5 * pw * math.cos(d), 0.5 * ph * math.sin(d)])
            out = rim / max(np.linalg.norm(rim), 1e-6) * (part.reach * h)
            lx, ly = rim + out
            c, s = math.cos(pang), math.sin(pang)
            px, py = pcx + lx * c - ly * s, pcy + lx * s + ly * c
            angle = pang + mirror * part.angle + rng.normal(0, 0.2)
        placed.append((px, py, w, h, angle))
    for i, part in enumerate(species.parts):  # draw parents first: children hang over them
        px, py, w, h, angle = placed[i]
        hue = part.hue if part.hue is not None else (0.0, 1.0)
        rgb = hsv_colour(rng, hue, (0.15, 0.95), (0.2, 0.95))
        mat = random_material(rng, rgb, max(scale / 8, 2.0), part.patterns, shade=(0.1, 0.35))
        mask, draw = cv.draw()
        draw.polygon(shape_points(part, px, py, w, h, angle), fill=255)
        label = None if labels is None else labels[i]
        cv.paint(mask, mat, label if label is not None else None, ("ellipse", px, py, w / 2, h / 2), 0.85)
        if labels is not None and label is None:  # an unlabelled part still covers what lies under it
            cv.label[np.asarray(mask) > 0] = 0


def render_creature_scene(rng: np.random.Generator, size: int, species: Species, labels: list[int],
                          distractor: Species | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A scene with one individual of ``species`` (part p labelled ``labels[p]``) and maybe another species'
    individual (background), on generic clutter. Returns (H x W x 3 uint8 RGB, H x W uint8 labels)."""
    cv = Canvas(size, rng)
    draw_background(rng, cv, clothing_distractors=False)
    scale = size * rng.uniform(0.7, 1.1)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    if distractor is not None:
        other = (size - cx + rng.normal(0, 0.1 * size), rng.uniform(0.2, 0.8) * size)
        _draw_individual(rng, cv, distractor, other[0], other[1], scale * rng.uniform(0.5, 1.0),
                         [None] * len(distractor.parts))
    _draw_individual(rng, cv, species, cx, cy, scale, labels)
    return finish_image(rng, cv), cv.label


def creature_episode(seed: int, index: int, size: int = 128, num_classes: int = 18, species_pool: int = 100_000,
                     keep_prob: float = 0.8, distractor_prob: float = 0.5) -> dict:
    """One k-way pretraining episode: a support and a query individual of one random species.

    Each part gets a random class slot in 1..num_classes-1 (slots mean nothing across episodes, so nothing is
    learned about particular ids). Each part is annotated on the support with probability ``keep_prob`` (at least
    one): parts left out are background in both images, as novel classes are in meta-training. Returns tensors in
    the layout of :func:`oshp.data.episodes.make_episode` (images 3 x H x W in [0, 1], labels H x W int64).
    """
    rng = np.random.default_rng([seed, index])
    species_id = int(rng.integers(species_pool))
    species = make_species(np.random.default_rng([seed, 7, species_id]))
    n = len(species.parts)
    slots = rng.permutation(np.arange(1, num_classes))[:n]
    keep = rng.random(n) < keep_prob
    if not keep.any():
        keep[int(rng.integers(n))] = True
    labels = [int(slots[p]) if keep[p] else None for p in range(n)]

    def distractor() -> Species | None:
        if rng.random() >= distractor_prob:
            return None
        return make_species(np.random.default_rng([seed, 7, int(rng.integers(species_pool))]))

    for attempt in range(10):  # the annotated parts can all hide under their own children: draw again, then
        if attempt == 3:  # annotate every part (the one drawn last is always visible)
            labels = [int(slots[p]) for p in range(n)]
        support_img, support_lab = render_creature_scene(rng, size, species, labels, distractor())
        if (support_lab > 0).any():
            break
    else:
        raise RuntimeError(f"creature episode {index} of seed {seed}: no annotated part stayed visible")
    query_img, query_lab = render_creature_scene(rng, size, species, labels, distractor())

    def image(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1).float().div_(255)

    return {"query_image": image(query_img), "support_image": image(support_img),
            "query_label": torch.from_numpy(query_lab.astype(np.int64)),
            "support_label": torch.from_numpy(support_lab.astype(np.int64))}


class CreatureEpisodes(torch.utils.data.Dataset):
    """``length`` pretraining episodes drawn on demand (episode i of a seed is always the same)."""

    def __init__(self, length: int, seed: int = 0, size: int = 128, num_classes: int = 18, **options) -> None:
        self.length, self.seed, self.size, self.num_classes, self.options = length, seed, size, num_classes, options

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return creature_episode(self.seed, int(index), self.size, self.num_classes, **self.options)
