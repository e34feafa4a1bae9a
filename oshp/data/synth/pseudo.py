"""Pseudo classes against the testing bias: a random textured shape pasted into both images of an episode.

Why: in meta-training, novel classes are labelled background, so a model learns that anything outside the base
classes is background, and at test time predicts background for the novel classes (the testing bias, paper section
1). A pseudo class is a new class in every episode: the same random material (colour, pattern) on a different
random shape in the support and in the query, annotated in both. The model must match it from the support alone, as
it must match a novel class at test time. The calibration (``../shared/reference/synthetic-calibration.md``) found
this helps from scratch at first and fades with training; ``TrainConfig.pseudo_class_prob`` switches it on.

The pseudo class takes the label slot of one of the fold's novel classes (always background in meta-training, so the
slot is free); its dynamic prototype is never used at test time, where novel classes use the support's prototype.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .creatures import shape_points, make_species
from .draw import hsv_colour, random_material, shading

__all__ = ["paste_pseudo_class"]


def _paste(image: torch.Tensor, labels: list[torch.Tensor], values: list[int], rng: np.random.Generator,
           part, material) -> torch.Tensor:
    """Paint ``part`` (random place, size, angle) with ``material`` into image (3 x H x W, [0, 1]) and labels."""
    h, w = image.shape[-2:]
    size = min(h, w)
    pw, ph = part.width / 0.6 * size * rng.uniform(0.25, 0.45), part.height / 0.7 * size * rng.uniform(0.25, 0.45)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).polygon(shape_points(part, cx, cy, pw, ph, rng.uniform(0, np.pi)), fill=255)
    mask = np.asarray(mask_img) > 0
    if not mask.any():
        return image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = material.texture(xx, yy) * shading(("ellipse", cx, cy, pw / 2, ph / 2), xx, yy, material.shade)[..., None]
    tex = np.clip(tex + material.grain * rng.standard_normal((h, w, 1)).astype(np.float32), 0, 255) / 255.0
    m = torch.from_numpy(mask)
    out = image.clone()
    out[:, m] = torch.from_numpy(tex[mask].T.copy()).to(out.dtype)
    for label, value in zip(labels, values):
        label[m] = value
    return out


def paste_pseudo_class(episode: dict, rng: np.random.Generator, class_id: int) -> dict:
    """Paste one pseudo class, labelled ``class_id``, into the support and the query of a k-way episode (in place).

    The human masks get background there (a pasted shape is not a person); ``support_classes`` gains the class.
    """
    part = make_species(rng).parts[0]
    material = random_material(rng, hsv_colour(rng, (0, 1), (0.2, 0.95), (0.2, 0.95)), 6.0,
                         {"plain": 0.4, "stripes": 0.2, "checks": 0.15, "dots": 0.15, "twill": 0.1})
    episode["support_image"] = _paste(episode["support_image"], [episode["support_label"], episode["support_human"]],
                                      [class_id, 0], rng, part, material)
    query_labels = [episode["query_label"], episode["query_human"]]
    values = [class_id, 0]
    if "query_label_full" in episode:
        query_labels.append(episode["query_label_full"])
        values.append(class_id)
    episode["query_image"] = _paste(episode["query_image"], query_labels, values, rng, part, material)
    if "support_classes" in episode and (episode["support_label"] == class_id).any():
        episode["support_classes"][class_id] = True
    return episode
