"""A toy visual world of coloured shapes on plain or textured backgrounds, its captions, and a
deterministic judge that reads a picture back (no neural network).

The toy model (`toy_model.py`) is pretrained on this world so that prompts visibly work. Two
combinations of things it knows are never shown to it, and are left for textual inversion to learn
from a few pictures:

* the object **purple star**: purple things and stars of other colours are everywhere, purple stars never;
* the style **light checkered** background: light backgrounds and checkered ones of other
  brightness are common, a light checkered one never.
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
SHAPES = ("circle", "square", "triangle", "star")
BRIGHTNESS = {"dark": 45, "grey": 125, "light": 205}  # grey level; textures alternate 45 below and above
TEXTURES = ("plain", "striped", "checkered")
HELD_OUT_OBJECT = ("purple", "star")
HELD_OUT_STYLE = ("light", "checkered")
SIZES = {"small": (6, 7), "large": (9, 11)}
_PERIOD = 8


def background_name(brightness: str, texture: str) -> str:
    return brightness if texture == "plain" else f"{brightness} {texture}"


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    brightness: str
    texture: str
    size: str
    radius: int
    cx: int
    cy: int
    angle: float

    @property
    def background(self) -> str:
        return background_name(self.brightness, self.texture)


def sample_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 brightness: str | None = None, texture: str | None = None, pretraining: bool = True) -> Scene:
    """A random scene; in pretraining the held-out combinations are drawn again until avoided."""
    while True:
        s = shape or str(rng.choice(SHAPES))
        c = colour or str(rng.choice(list(COLOURS)))
        b = brightness or str(rng.choice(list(BRIGHTNESS)))
        t = texture or str(rng.choice(TEXTURES))
        if not pretraining or ((c, s) != HELD_OUT_OBJECT and (b, t) != HELD_OUT_STYLE):
            break
    size = str(rng.choice(list(SIZES)))
    lo, hi = SIZES[size]
    radius = int(rng.integers(lo, hi + 1))
    margin = radius + 2
    cx, cy = (int(v) for v in rng.integers(margin, SIZE - margin, size=2))
    angle = float(rng.uniform(-0.25, 0.25))
    return Scene(s, c, b, t, size, radius, cx, cy, angle)


def _background(brightness: str, texture: str) -> np.ndarray:
    level = BRIGHTNESS[brightness]
    if texture == "plain":
        return np.full((SIZE, SIZE), level, np.uint8)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    half = _PERIOD // 2
    band = (y // half) % 2 if texture == "striped" else ((y // half) + (x // half)) % 2
    return np.where(band == 1, level + 45, level - 45).clip(0, 255).astype(np.uint8)


def _polygon(cx, cy, radius, n, angle, inner=None):
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        r = radius if (inner is None or i % 2 == 0) else inner
        a = angle - math.pi / 2 + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def render(scene: Scene) -> Image.Image:
    gray = _background(scene.brightness, scene.texture)
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
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image


def caption(scene: Scene, rng: np.random.Generator, background_dropout: float = 0.2, size_dropout: float = 0.5) -> str:
    """The pretraining caption, e.g. "a small red circle on a dark striped background"."""
    words = ["a"]
    if rng.random() >= size_dropout:
        words.append(scene.size)
    words += [scene.colour, scene.shape]
    if rng.random() >= background_dropout:
        words += ["on", "a", *scene.background.split(), "background"]
    return " ".join(words)


# ------------------------------------------------------------------------------------------ judge


@dataclass(frozen=True)
class Verdict:
    shape: str | None  # None when no coloured object is found
    colour: str | None
    brightness: str
    texture: str
    features: dict

    @property
    def background(self) -> str:
        return background_name(self.brightness, self.texture)


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
    textured = 0.035  # a sharp or blurred band edge both add up to ~0.06; plain noise stays far below
    texture = "checkered" if dy > textured and dx > textured else "striped" if dy > textured else "plain"
    level = float(gray[bg].mean()) if bg.any() else 0.5
    brightness = min(BRIGHTNESS, key=lambda n: abs(BRIGHTNESS[n] / 255 - level))

    if area < 12:
        return Verdict(None, None, brightness, texture, features)

    hsv_hue = [colorsys.rgb_to_hsv(*px)[0] * 360 for px in rgb[obj]]
    angles = np.radians(hsv_hue)
    hue = math.degrees(math.atan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360
    ys, xs = np.nonzero(obj)
    corners = np.concatenate([np.stack([ys + dy_, xs + dx_], 1) for dy_ in (0, 1) for dx_ in (0, 1)])
    solidity = area / max(_hull_area(corners), 1.0)
    # Compactness: area against the circle through the farthest pixel; rotation does not change
    # it (circle 1, square 0.64, triangle 0.41, star lower and not convex).
    reach = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() + 0.5
    compact = area / (math.pi * reach**2)
    features.update(hue=hue, compact=compact, solidity=solidity)
    if solidity < 0.72:
        shape = "star"
    elif compact > 0.8:
        shape = "circle"
    elif compact > 0.52:
        shape = "square"
    else:
        shape = "triangle"
    return Verdict(shape, _hue_name(hue), brightness, texture, features)
