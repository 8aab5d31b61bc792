"""Drawing the synthetic benchmark's objects and backgrounds (:mod:`.synthetic` places them).

Seven categories, each a silhouette of named parts (:func:`object_shape`) with a class-typical,
overlapping colour palette, shading and texture (:func:`colour_object`), on non-flat backgrounds
with no object-like distractors (:func:`background`). Every function draws from the ``rng`` it is
given, so an image is a function of its RNG stream alone.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

# Palettes: HSV with H in degrees, S and V in [0, 1]. Per class, per part, a list of base colours.
_P = {
    "car": {
        "body": [(0, .80, .80), (220, .70, .70), (50, .85, .90), (210, .08, .75), (140, .60, .55)],
        "window": [(200, .30, .35), (210, .20, .25)],
        "wheel": [(0, 0.0, .10), (0, 0.0, .18)],
    },
    "person": {
        "torso": [(355, .70, .75), (215, .70, .60), (120, .55, .55), (280, .50, .55), (30, .80, .85)],
        "legs": [(220, .50, .40), (0, 0.0, .20), (40, .35, .55)],
        "head": [(25, .45, .90), (25, .55, .65), (20, .60, .40)],
    },
    "mushroom": {
        "stem": [(45, .15, .92), (40, .25, .80)],
        "cap": [(0, .85, .80), (25, .60, .50), (25, .80, .85), (35, .45, .75)],
    },
    "tree": {
        "crown": [(120, .70, .55), (140, .70, .35), (85, .70, .70), (30, .80, .80)],
        "trunk": [(25, .65, .40), (20, .50, .30)],
    },
    "fish": {
        "body": [(25, .90, .95), (50, .85, .90), (200, .75, .75), (190, .10, .80), (355, .70, .80)],
        "eye": [(0, 0.0, .08)],
    },
    "star": {
        "body": [(52, .90, .95), (42, .85, .85), (30, .85, .95), (0, .75, .85), (55, .20, .95)],
    },
    "donut": {
        "body": [(330, .50, .90), (20, .70, .35), (35, .50, .80), (290, .40, .70), (0, 0.0, .92)],
    },
}

# (bbox width, bbox height) relative to the object size s, max |rotation| in degrees
_GEOM = {
    "car": (1.0, 0.62, 12), "person": (0.5, 1.0, 12), "mushroom": (0.85, 0.9, 15),
    "tree": (0.72, 1.0, 10), "fish": (1.0, 0.55, 30), "star": (1.0, 1.0, 180),
    "donut": (1.0, 1.0, 0),
}

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = 1 << _SHIFT


# ----------------------------------------------------------------------------------- drawing
class _Canvas:
    """A part-id map of one object: unit coordinates (u, v) in [0,1]^2 map to its bbox."""

    def __init__(self, w: float, h: float):
        self.w, self.h = w, h
        self.pad = 0.25 * max(w, h) + 2
        side = int(np.ceil(max(w, h) + 2 * self.pad))
        self.P = np.zeros((side, side), np.uint8)
        self.ox = (side - w) / 2.0
        self.oy = (side - h) / 2.0

    def pt(self, u, v):
        return (int(round((self.ox + u * self.w) * _SCALE)), int(round((self.oy + v * self.h) * _SCALE)))

    def poly(self, pts, val):
        arr = np.array([self.pt(u, v) for u, v in pts], np.int32)
        cv2.fillPoly(self.P, [arr], int(val), cv2.LINE_8, _SHIFT)

    def ellipse(self, cu, cv, au, av, val, start=0, end=360, angle=0):
        ax = (max(1, int(round(au * self.w * _SCALE))), max(1, int(round(av * self.h * _SCALE))))
        cv2.ellipse(self.P, self.pt(cu, cv), ax, angle, start, end, int(val), -1, cv2.LINE_8, _SHIFT)

    def rrect(self, u0, v0, u1, v1, r, val):
        """Rounded rectangle; r relative to the bbox height."""
        ru, rv = r * self.h / self.w, r
        self.poly([(u0 + ru, v0), (u1 - ru, v0), (u1, v0 + rv), (u1, v1 - rv), (u1 - ru, v1),
                   (u0 + ru, v1), (u0, v1 - rv), (u0, v0 + rv)], val)
        for cu, cv in ((u0 + ru, v0 + rv), (u1 - ru, v0 + rv), (u0 + ru, v1 - rv), (u1 - ru, v1 - rv)):
            self.ellipse(cu, cv, ru, rv, val)


def _draw_car(c: _Canvas, rng):
    cab0 = rng.uniform(0.18, 0.30)
    cab1 = rng.uniform(0.68, 0.80)
    c.rrect(0.02, 0.36, 0.98, 0.80, 0.08, 1)                                   # body
    c.poly([(cab0, 0.40), (cab0 + 0.10, 0.04), (cab1 - 0.08, 0.04), (cab1, 0.40)], 1)  # cabin
    mid = 0.5 * (cab0 + cab1)
    c.poly([(cab0 + 0.07, 0.38), (cab0 + 0.13, 0.12), (mid - 0.02, 0.12), (mid - 0.02, 0.38)], 2)
    c.poly([(mid + 0.02, 0.38), (mid + 0.02, 0.12), (cab1 - 0.11, 0.12), (cab1 - 0.05, 0.38)], 2)
    for cu in (0.24, 0.76):                                                   # wheels
        c.ellipse(cu, 0.80, 0.115, 0.19, 3)
    return {1: "body", 2: "window", 3: "wheel"}


def _draw_person(c: _Canvas, rng):
    c.ellipse(0.5, 0.15, 0.28, 0.14, 3)                                        # head
    c.rrect(0.14, 0.30, 0.86, 0.66, 0.06, 1)                                   # torso
    c.poly([(0.14, 0.34), (0.02, 0.60), (0.12, 0.62), (0.22, 0.42)], 1)        # arms
    c.poly([(0.86, 0.34), (0.98, 0.60), (0.88, 0.62), (0.78, 0.42)], 1)
    gap = rng.uniform(0.04, 0.08)
    c.poly([(0.20, 0.64), (0.5 - gap, 0.64), (0.47 - gap, 1.0), (0.22, 1.0)], 2)  # legs
    c.poly([(0.5 + gap, 0.64), (0.80, 0.64), (0.78, 1.0), (0.53 + gap, 1.0)], 2)
    return {1: "torso", 2: "legs", 3: "head"}


def _draw_mushroom(c: _Canvas, rng):
    sw = rng.uniform(0.12, 0.17)
    c.poly([(0.5 - sw, 0.45), (0.5 + sw, 0.45), (0.5 + sw * 1.25, 1.0), (0.5 - sw * 1.25, 1.0)], 1)
    c.ellipse(0.5, 0.50, 0.5, 0.48, 2, start=180, end=360)                     # cap (upper half)
    c.ellipse(0.5, 0.50, 0.5, 0.07, 2)                                         # cap rim
    return {1: "stem", 2: "cap"}


def _draw_tree(c: _Canvas, rng):
    c.poly([(0.44, 0.70), (0.56, 0.70), (0.58, 1.0), (0.42, 1.0)], 2)          # trunk
    if rng.random() < 0.5:                                                     # fir: stacked tiers
        c.poly([(0.5, 0.0), (0.18, 0.42), (0.82, 0.42)], 1)
        c.poly([(0.5, 0.18), (0.0, 0.76), (1.0, 0.76)], 1)
    else:                                                                      # simple triangle
        c.poly([(0.5, 0.0), (0.0, 0.76), (1.0, 0.76)], 1)
    return {1: "crown", 2: "trunk"}


def _draw_fish(c: _Canvas, rng):
    c.poly([(0.62, 0.5), (1.0, 0.08), (0.92, 0.5), (1.0, 0.92)], 1)            # tail
    c.ellipse(0.38, 0.5, 0.37, 0.42, 1)                                        # body
    c.poly([(0.28, 0.12), (0.45, 0.0), (0.55, 0.16)], 1)                       # dorsal fin
    c.ellipse(0.16, 0.42, 0.035, 0.07, 2)                                      # eye
    return {1: "body", 2: "eye"}


def _draw_star(c: _Canvas, rng):
    n = 5
    inner = rng.uniform(0.38, 0.46)
    pts = []
    for k in range(2 * n):
        r = 0.5 if k % 2 == 0 else 0.5 * inner
        a = -np.pi / 2 + k * np.pi / n
        pts.append((0.5 + r * np.cos(a), 0.53 + r * np.sin(a)))
    c.poly(pts, 1)
    return {1: "body"}


def _draw_donut(c: _Canvas, rng):
    c.ellipse(0.5, 0.5, 0.5, 0.5, 1)
    hole = rng.uniform(0.17, 0.23)
    c.ellipse(0.5, 0.5, hole, hole, 0)
    return {1: "body"}


_DRAW = {"car": _draw_car, "person": _draw_person, "mushroom": _draw_mushroom, "tree": _draw_tree,
         "fish": _draw_fish, "star": _draw_star, "donut": _draw_donut}

# which parts get a special texture: (class, part) -> kind
_TEXTURE = {("mushroom", "cap"): "spots", ("fish", "body"): "stripes", ("donut", "body"): "sprinkles",
            ("tree", "crown"): "speckle", ("car", "body"): "highlight", ("star", "body"): "radial"}


def _hsv_to_bgr(h, s, v) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array([b, g, r], np.float32) * 255.0


def _pick_colour(rng, palette) -> np.ndarray:
    h, s, v = palette[rng.integers(len(palette))]
    return _hsv_to_bgr(h + rng.uniform(-10, 10), s + rng.uniform(-0.12, 0.08), v + rng.uniform(-0.12, 0.08))


def _smooth_noise(rng, h, w, cells) -> np.ndarray:
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def object_shape(cls: str, size: float, rng):
    """Part map (uint8, tight crop) of one object instance, and its part-id -> part-name map."""
    wr, hr, max_rot = _GEOM[cls]
    asp = rng.uniform(0.88, 1.12)
    c = _Canvas(max(6.0, size * wr * asp), max(6.0, size * hr / asp))
    parts = _DRAW[cls](c, rng)
    P = c.P
    if rng.random() < 0.5:
        P = P[:, ::-1]
    rot = rng.uniform(-max_rot, max_rot)
    if abs(rot) > 1:
        side = P.shape[0]
        M = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), rot, 1.0)
        P = cv2.warpAffine(np.ascontiguousarray(P), M, (side, side), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(P)
    return np.ascontiguousarray(P[ys.min():ys.max() + 1, xs.min():xs.max() + 1]), parts


def colour_object(cls, P, parts, rng, bg_patch) -> np.ndarray:
    """BGR float layer for the part map ``P``: class palette colours, shading and texture."""
    h, w = P.shape
    layer = np.zeros((h, w, 3), np.float32)
    bg_mean = bg_patch[P > 0].mean(axis=0) if (P > 0).any() else np.full(3, 128, np.float32)
    for pid, pname in parts.items():
        sel = P == pid
        if not sel.any():
            continue
        pal = _P[cls][pname]
        col = _pick_colour(rng, pal)
        if pid == 1:  # main part: keep the silhouette contrasted against the background
            for _ in range(6):
                if np.linalg.norm(col - bg_mean) > 70:
                    break
                col = _pick_colour(rng, pal)
        layer[sel] = col
        kind = _TEXTURE.get((cls, pname))
        if kind == "spots" and rng.random() < 0.6:
            k = rng.integers(3, 7)
            ys, xs = np.nonzero(sel)
            spot = _hsv_to_bgr(0, 0, rng.uniform(0.85, 1.0))
            for i in rng.integers(0, len(xs), k):
                r = max(1, int(round(rng.uniform(0.05, 0.09) * max(h, w))))
                m = np.zeros((h, w), np.uint8)
                cv2.circle(m, (int(xs[i]), int(ys[i])), r, 1, -1)
                layer[(m > 0) & sel] = spot
        elif kind == "stripes" and rng.random() < 0.7:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            period = max(3.0, rng.uniform(0.14, 0.22) * w)
            band = np.sin(2 * np.pi * xx / period + rng.uniform(0, 6.3)) > 0.45
            dark = rng.random() < 0.5
            stripe = col * 0.45 if dark else np.minimum(col * 0.3 + 190, 255)
            layer[band & sel] = stripe
        elif kind == "sprinkles" and rng.random() < 0.6:
            ys, xs = np.nonzero(sel)
            for i in rng.integers(0, len(xs), rng.integers(6, 14)):
                sc = _hsv_to_bgr(rng.uniform(0, 360), 0.8, 0.95)
                layer[ys[i]:ys[i] + 2, xs[i]:xs[i] + 2][sel[ys[i]:ys[i] + 2, xs[i]:xs[i] + 2]] = sc
        elif kind == "speckle":
            sp = (rng.random((h, w)) < 0.12) & sel
            layer[sp] *= 0.7
        elif kind == "highlight":
            yy = np.mgrid[0:h, 0:w][0].astype(np.float32) / max(h - 1, 1)
            hl = np.exp(-((yy - 0.45) / 0.06) ** 2)[..., None] * 50.0
            layer += hl * sel[..., None]
        elif kind == "radial":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            d = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.5 * max(h, w))
            layer *= np.where(sel, 1.15 - 0.3 * d, 1.0)[..., None]
    # shading: a linear light gradient across the object plus smooth and fine noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    proj = (xx * np.cos(a) + yy * np.sin(a)) / max(h, w)
    proj -= proj.mean()
    shade = 1.0 + rng.uniform(0.2, 0.5) * proj
    layer *= shade[..., None]
    layer += (_smooth_noise(rng, h, w, 4) * rng.uniform(4, 10))[..., None]
    layer += rng.standard_normal((h, w, 1)).astype(np.float32) * 4.0
    return layer


def background(rng, n: int) -> np.ndarray:
    """Float BGR background: never flat, never object-like."""
    kind = rng.integers(4)
    hue = rng.uniform(0, 360)
    base = _hsv_to_bgr(hue, rng.uniform(0.04, 0.35), rng.uniform(0.30, 0.85))
    if kind == 0:  # smooth procedural noise (two octaves), luminance and colour
        img = base + (_smooth_noise(rng, n, n, 4) * 22 + _smooth_noise(rng, n, n, 9) * 8)[..., None]
        img = img + np.stack([_smooth_noise(rng, n, n, 3) for _ in range(3)], -1) * 10
    elif kind == 1:  # linear gradient between two colours
        other = _hsv_to_bgr(hue + rng.uniform(-60, 60), rng.uniform(0.04, 0.35), rng.uniform(0.30, 0.85))
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:  # low-contrast stripes
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        a = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        s = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
        img = base + (s * rng.uniform(6, 14))[..., None] + (_smooth_noise(rng, n, n, 3) * 10)[..., None]
    else:  # blurred random colour field
        cells = int(rng.integers(8, 20))
        field = np.stack([rng.uniform(-1, 1, (cells, cells)) for _ in range(3)], -1).astype(np.float32)
        field = cv2.resize(field, (n, n), interpolation=cv2.INTER_LINEAR)
        field = cv2.GaussianBlur(field, (0, 0), n / cells)
        field /= max(np.abs(field).max(), 1e-6)
        img = base + field * rng.uniform(20, 40)
    img = img + rng.standard_normal((n, n, 1)).astype(np.float32) * 3.0
    return np.asarray(img, np.float32)
