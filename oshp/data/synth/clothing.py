"""Materials of each clothing family (colour ranges, patterns): shared by people and by the clothing-coloured clutter
that makes the testing bias visible."""

from __future__ import annotations



from .draw import hsv_colour, random_material



# Each class has its own colour family and pattern mix; skirt and dress deliberately share theirs.
def skin_material(rng, u):
    v = rng.uniform(0.35, 0.97)
    rgb = hsv_colour(rng, (0.03, 0.085), (0.62 - 0.4 * v, 0.75 - 0.35 * v), (v, v))
    return random_material(rng, rgb, u, {"plain": 1}, shade=(0.15, 0.3), grain=(1, 3))


def hair_material(rng, u):
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


def upper_material(rng, u):
    if rng.random() < 0.35:  # white, grey, black
        rgb = hsv_colour(rng, (0, 1), (0, 0.12), (0.08, 0.95))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.3, 0.9), (0.3, 0.95))
    return random_material(rng, rgb, u, {"plain": 0.5, "stripes": 0.25, "checks": 0.1, "dots": 0.15})


def skirt_dress_material(rng, u):
    r = rng.random()
    if r < 0.45:  # reds, pinks, purples
        rgb = hsv_colour(rng, (0.78, 1.04), (0.35, 0.85), (0.35, 0.95))
    elif r < 0.7:
        rgb = hsv_colour(rng, (0, 1), (0.35, 0.85), (0.25, 0.9))
    else:  # black, navy, white
        rgb = hsv_colour(rng, (0.55, 0.7), (0, 0.5), (0.08, 0.95))
    return random_material(rng, rgb, u, {"plain": 0.4, "dots": 0.22, "stripes": 0.13, "checks": 0.1, "pleats": 0.15})


def pants_material(rng, u):
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


def shoe_material(rng, u):
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


def hat_material(rng, u):
    r = rng.random()
    if r < 0.35:
        rgb = hsv_colour(rng, (0, 1), (0, 0.2), (0.05, 0.35))
    elif r < 0.6:  # straw, beige
        rgb = hsv_colour(rng, (0.09, 0.14), (0.25, 0.55), (0.6, 0.9))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.4, 0.9), (0.35, 0.9))
    return random_material(rng, rgb, u, {"plain": 0.65, "stripes": 0.15, "checks": 0.1, "twill": 0.1}, shade=(0.3, 0.45))


def sunglasses_material(rng, u):
    return random_material(rng, hsv_colour(rng, (0, 1), (0.1, 0.6), (0.03, 0.18)), u, {"plain": 1}, shade=(0, 0.1), grain=(1, 3))


def belt_material(rng, u):
    r = rng.random()
    rgb = hsv_colour(rng, (0.04, 0.08), (0.5, 0.8), (0.15, 0.4)) if r < 0.6 else hsv_colour(rng, (0, 1), (0, 0.5), (0.03, 0.3))
    return random_material(rng, rgb, u, {"plain": 1}, shade=(0.1, 0.2))


def bag_material(rng, u):
    r = rng.random()
    if r < 0.3:
        rgb = hsv_colour(rng, (0, 1), (0, 0.2), (0.04, 0.2))
    elif r < 0.7:  # leather browns and tan
        rgb = hsv_colour(rng, (0.04, 0.1), (0.45, 0.85), (0.25, 0.75))
    else:
        rgb = hsv_colour(rng, (0, 1), (0.5, 0.9), (0.35, 0.85))
    return random_material(rng, rgb, u, {"plain": 0.85, "checks": 0.15}, shade=(0.3, 0.5))


def scarf_material(rng, u):
    return random_material(rng, hsv_colour(rng, (0, 1), (0.2, 0.9), (0.25, 0.95)), u, {"stripes": 0.4, "checks": 0.3, "plain": 0.3})


CLOTHING_FAMILIES = (upper_material, skirt_dress_material, pants_material, hat_material, bag_material, scarf_material, skin_material, hair_material, shoe_material)
