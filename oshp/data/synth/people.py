"""Stylised people in clothes with exact raw ATR label maps: one to three a picture, posed, overlapping, with small
parts (shoes, sunglasses, hats) and similar parts (skirt and dress) as the paper describes."""

from __future__ import annotations

import math

import numpy as np

from .clothing import (
    bag_material, belt_material, hair_material, hat_material, pants_material, scarf_material, shoe_material,
    skin_material, skirt_dress_material, sunglasses_material, upper_material,
)
from .draw import Canvas, Material, capsule, ellipse, finish_image, lerp
from .scene import draw_background, occluder

MIN_SIZE = 32
"""Smallest image side a person is drawn in (px)."""

# Raw ATR ids (see vocab._ATR_RAW).
BG, HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT = range(9)
LEFT_SHOE, RIGHT_SHOE, FACE, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, SCARF = range(9, 18)


# A person faces the viewer, so the person's left side (+1) is on the image's right.
_ARM = {+1: LEFT_ARM, -1: RIGHT_ARM}
_LEG = {+1: LEFT_LEG, -1: RIGHT_LEG}
_SHOE = {+1: LEFT_SHOE, -1: RIGHT_SHOE}
_HEIGHT_UNITS = 7.1  # a person is about 7 head heights tall (slightly big-headed, so small parts stay visible)


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
        self.skin = skin_material(rng, u)
        self.hair = hair_material(rng, u)
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
            "upper": upper_material(rng, u), "sd": skirt_dress_material(rng, u), "pants": pants_material(rng, u), "shoe": shoe_material(rng, u),
            "hat": hat_material(rng, u), "sun": sunglasses_material(rng, u), "belt": belt_material(rng, u), "bag": bag_material(rng, u),
            "scarf": scarf_material(rng, u),
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
            capsule(d, a, b, ra, rb)
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
                    chain = [(hip, self.leg_r + 0.08), (lerp(hip, kn, self.shorts_len), self.leg_r * 0.9 + 0.07)]
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
            ellipse(d, c, self.R(0.17), self.R(0.17))
            self.cv.paint(mask, self.skin, _ARM[s], ("ellipse", c[0], c[1], self.R(0.17), self.R(0.17)), 0.85)
        if self.sleeves == "none" and not self.jacket:
            return
        cls, mat = (UPPER, self.mat["upper"]) if (self.lower != "dress" or self.jacket) else (DRESS, self.mat["sd"])
        if self.sleeves == "long" or self.jacket:
            chain = [(sh, r + 0.07), (el, r * 0.82 + 0.07), (wr, r * 0.65 + 0.07)]
        else:
            chain = [(sh, r + 0.06), (lerp(sh, el, self.short_sleeve), r * 0.9 + 0.07)]
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
            ellipse(d, self.P(0, 0.45), self.R(rx + 0.07), self.R(ry + 0.02))
            if self.hair_style == "bun":
                ellipse(d, self.P(0, -0.05), self.R(0.2), self.R(0.16))
            self.cv.paint(mask, hair, HAIR, ("ellipse", c[0], c[1], self.R(rx + 0.07), self.R(ry)), 0.85)
        mask, d = self.cv.draw()
        ellipse(d, c, self.R(rx), self.R(ry))
        for s in (+1, -1):  # ears
            ellipse(d, self.P(s * rx, 0.58), self.R(0.07), self.R(0.11))
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
                ellipse(d, self.P(s * 0.15, 0.58), self.R(0.045), self.R(0.035))
                p, q = self.P(s * 0.07, 0.47), self.P(s * 0.24, 0.46)
                d.line([p, q], fill=255, width=max(1, int(u * 0.035)))
            self.cv.paint(mask, dark, None, None, 1)
            mask, d = self.cv.draw()
            ellipse(d, self.P(0, 0.84), self.R(0.1), self.R(0.03))
            self.cv.paint(mask, lips, None, None, 1)
        if self.sunglasses:
            mask, d = self.cv.draw()
            for s in (+1, -1):
                ellipse(d, self.P(s * 0.16, 0.58), max(1.5, self.R(0.14)), max(1.0, self.R(0.095)))
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
            ellipse(d, self.P(0, 0.3), self.R(0.5), self.R(0.09))
        elif kind == "beanie":
            r = self.R(0.46)
            d.chord([c[0] - r, c[1] - self.R(0.5), c[0] + r, c[1] + self.R(0.5)], 180, 360, fill=255)
            d.polygon([self.P(-0.47, 0.22), self.P(0.47, 0.22), self.P(0.47, 0.38), self.P(-0.47, 0.38)], fill=255)
        else:  # sun hat: a wide brim and a crown
            w = self.rng.uniform(0.7, 0.9)
            ellipse(d, self.P(0, 0.25), self.R(w), self.R(0.13))
            d.polygon([self.P(-0.36, -0.18), self.P(0.36, -0.18), self.P(0.4, 0.25), self.P(-0.4, 0.25)], fill=255)
        self.cv.paint(mask, mat, HAT, ("x", c[0], self.R(0.6)), 0.75)


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
        occluder(rng, cv)
    return finish_image(rng, cv), cv.label
