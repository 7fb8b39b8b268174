"""A toy visual world of coloured shapes on plain or textured backgrounds, its captions, and a
deterministic judge that reads a picture back (no neural network).

The toy model (`toy_model.py`) is pretrained on this world so that prompts visibly work; two
concepts are never named in its training captions and are left for textual inversion to learn:

* the **ring** shape: rings appear now and then in pretraining, but their captions never have a
  shape noun (and other shapes also lose their noun at times, so no caption pattern names it);
* the **checkered** background: it appears, but its captions never describe the background.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
COLOURS = {  # name -> (hue in degrees, rgb)
    "red": (0, (220, 40, 40)),
    "yellow": (55, (225, 205, 30)),
    "green": (125, (40, 185, 60)),
    "cyan": (185, (30, 195, 210)),
    "blue": (230, (45, 70, 225)),
    "purple": (285, (160, 60, 205)),
}
NAMED_SHAPES = ("circle", "square", "triangle", "star")
SHAPES = NAMED_SHAPES + ("ring",)
PLAIN_BACKGROUNDS = {"black": 30, "grey": 125, "white": 225}
BACKGROUNDS = tuple(PLAIN_BACKGROUNDS) + ("striped", "checkered")
HELD_OUT_SHAPE = "ring"
HELD_OUT_BACKGROUND = "checkered"
SIZES = {"small": (6, 7), "large": (9, 11)}
_TEXTURE_DARK, _TEXTURE_LIGHT, _PERIOD = 75, 165, 8


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    radius: int
    cx: int
    cy: int
    angle: float


def sample_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 background: str | None = None, ring_rate: float = 0.08, checkered_rate: float = 0.1) -> Scene:
    if shape is None:
        shape = HELD_OUT_SHAPE if rng.random() < ring_rate else str(rng.choice(NAMED_SHAPES))
    if background is None:
        background = HELD_OUT_BACKGROUND if rng.random() < checkered_rate else str(
            rng.choice(["black", "grey", "white", "striped"]))
    colour = colour or str(rng.choice(list(COLOURS)))
    size = str(rng.choice(list(SIZES)))
    lo, hi = SIZES[size]
    radius = int(rng.integers(lo, hi + 1))
    margin = radius + 2
    cx, cy = (int(v) for v in rng.integers(margin, SIZE - margin, size=2))
    angle = float(rng.uniform(-0.25, 0.25))
    return Scene(shape, colour, background, size, radius, cx, cy, angle)


def _background(name: str) -> np.ndarray:
    if name in PLAIN_BACKGROUNDS:
        return np.full((SIZE, SIZE), PLAIN_BACKGROUNDS[name], np.uint8)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    band = (y // (_PERIOD // 2)) % 2 if name == "striped" else ((y // (_PERIOD // 2)) + (x // (_PERIOD // 2))) % 2
    return np.where(band == 1, _TEXTURE_LIGHT, _TEXTURE_DARK).astype(np.uint8)


def _polygon(cx, cy, radius, n, angle, inner=None):
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        r = radius if (inner is None or i % 2 == 0) else inner
        a = angle - math.pi / 2 + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def render(scene: Scene) -> Image.Image:
    gray = _background(scene.background)
    image = Image.fromarray(np.stack([gray] * 3, axis=-1))
    draw = ImageDraw.Draw(image)
    rgb = COLOURS[scene.colour][1]
    cx, cy, r = scene.cx, scene.cy, scene.radius
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif scene.shape == "square":
        s = r * 0.88
        draw.polygon(_polygon(cx, cy, s * math.sqrt(2), 4, scene.angle + math.pi / 4), fill=rgb)
    elif scene.shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.1, 3, scene.angle), fill=rgb)
    elif scene.shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.15, 5, scene.angle, inner=r * 0.45), fill=rgb)
    elif scene.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        inner = max(2, round(r * 0.5))
        hole = Image.fromarray(_background(scene.background))
        mask = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(mask).ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=255)
        image.paste(Image.merge("RGB", [hole] * 3), (0, 0), mask)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image


def caption(scene: Scene, rng: np.random.Generator, noun_dropout: float = 0.1, background_dropout: float = 0.3,
            size_dropout: float = 0.5) -> str:
    """The pretraining caption. The held-out concepts are never named: a ring loses its noun, a
    checkered background loses its phrase; other scenes lose them at random too."""
    words = ["a"]
    if rng.random() >= size_dropout:
        words.append(scene.size)
    words.append(scene.colour)
    if scene.shape != HELD_OUT_SHAPE and rng.random() >= noun_dropout:
        words.append(scene.shape)
    if scene.background != HELD_OUT_BACKGROUND and rng.random() >= background_dropout:
        words += ["on", "a", scene.background, "background"]
    return " ".join(words)


# ------------------------------------------------------------------------------------------ judge


@dataclass(frozen=True)
class Verdict:
    shape: str | None  # None when no coloured object is found
    colour: str | None
    background: str
    features: dict


def _hue_name(hue_deg: float) -> str:
    def dist(h):
        d = abs(h - hue_deg) % 360
        return min(d, 360 - d)

    return min(COLOURS, key=lambda n: dist(COLOURS[n][0]))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    seen = np.zeros_like(mask, bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, comp = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _enclosed(mask: np.ndarray) -> np.ndarray:
    """Background pixels that cannot reach the border without crossing the object: its holes."""
    h, w = mask.shape
    free = ~mask
    reach = np.zeros_like(mask, bool)
    stack = [(y, x) for y in range(h) for x in (0, w - 1) if free[y, x]]
    stack += [(y, x) for x in range(w) for y in (0, h - 1) if free[y, x]]
    for y, x in stack:
        reach[y, x] = True
    while stack:
        y, x = stack.pop()
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < h and 0 <= nx < w and free[ny, nx] and not reach[ny, nx]:
                reach[ny, nx] = True
                stack.append((ny, nx))
    return free & ~reach


def _hull_area(points: np.ndarray) -> float:
    pts = sorted(set(map(tuple, points)))
    if len(pts) < 3:
        return float(len(pts))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    area = 0.0
    for i in range(len(hull)):
        x1, y1 = hull[i]
        x2, y2 = hull[(i + 1) % len(hull)]
        area += x1 * y2 - x2 * y1
    return abs(area) / 2


def judge(image: Image.Image) -> Verdict:
    """Find the coloured object and the background in a toy-world picture."""
    rgb = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    mx, mn = rgb.max(-1), rgb.min(-1)
    saturation = (mx - mn) / np.maximum(mx, 1e-6)
    colourful = (saturation > 0.4) & (mx > 0.3)
    obj = _largest_component(colourful)
    area = int(obj.sum())
    features: dict = {"area": area}

    # background: what is left once the object and its rim are removed
    rim = obj.copy()
    rim[1:] |= obj[:-1]; rim[:-1] |= obj[1:]; rim[:, 1:] |= obj[:, :-1]; rim[:, :-1] |= obj[:, 1:]  # noqa: E702
    gray = rgb.mean(-1)
    bg = ~rim & ~colourful
    dy_pairs = bg[1:] & bg[:-1]
    dx_pairs = bg[:, 1:] & bg[:, :-1]
    dy = float(np.abs(np.diff(gray, axis=0))[dy_pairs].mean()) if dy_pairs.any() else 0.0
    dx = float(np.abs(np.diff(gray, axis=1))[dx_pairs].mean()) if dx_pairs.any() else 0.0
    features.update(dx=dx, dy=dy)
    textured = 0.06
    if dy > textured and dx > textured:
        background = "checkered"
    elif dy > textured:
        background = "striped"
    else:
        level = float(np.median(gray[bg])) if bg.any() else 0.5
        background = min(PLAIN_BACKGROUNDS, key=lambda n: abs(PLAIN_BACKGROUNDS[n] / 255 - level))

    if area < 12:
        return Verdict(None, None, background, features)

    hsv_hue = [colorsys.rgb_to_hsv(*px)[0] * 360 for px in rgb[obj]]
    angles = np.radians(hsv_hue)
    hue = math.degrees(math.atan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360
    ys, xs = np.nonzero(obj)
    holes = int((_enclosed(obj) & ~colourful).sum())
    corners = np.concatenate([np.stack([ys + dy_, xs + dx_], 1) for dy_ in (0, 1) for dx_ in (0, 1)])
    solidity = area / max(_hull_area(corners), 1.0)
    # Compactness: area against the circle through the farthest pixel; rotation does not change
    # it (circle 1, square 0.64, triangle 0.41, star lower and not convex).
    reach = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() + 0.5
    compact = (area + holes) / (math.pi * reach**2)
    features.update(hue=hue, compact=compact, solidity=solidity, holes=holes)
    if holes >= max(3, 0.08 * area):
        shape = "ring"
    elif solidity < 0.72:
        shape = "star"
    elif compact > 0.8:
        shape = "circle"
    elif compact > 0.52:
        shape = "square"
    else:
        shape = "triangle"
    return Verdict(shape, _hue_name(hue), background, features)
