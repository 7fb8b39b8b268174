"""What the quality yardstick asks of a picture: the learned concept (the purple star the toy model
never saw) on its own, and composed with other words. Pure functions of pictures, on top of the toy
world's judge (tiforge.toy.world.judge), which they use as it is.

Compositions left out, and why (quality.py measures it on every run, as PROBES below, with the
model's own words): the toy model was pretrained on one object per caption, so "two purple stars" or
"a purple star and a red circle" come out as one object in (nearly) every picture; a composition the
model cannot draw from words cannot tell one embedding from another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tiforge.toy.world import HELD_OUT_OBJECT, SIZE, Verdict, _largest_component, judge

# The judge's own test for "part of an object" (saturated and not dark) and its smallest object.
_SATURATION, _VALUE, MIN_AREA = 0.4, 0.3, 12


def is_concept(verdict: Verdict) -> bool:
    """The judge sees the concept: a purple star (colour and shape both)."""
    return (verdict.colour, verdict.shape) == HELD_OUT_OBJECT


@dataclass(frozen=True)
class Composition:
    """A prompt around the concept ("{}": the learned token, or the words "purple star") and what a
    picture must show to count."""

    name: str
    template: str
    passes: Callable[[Verdict], bool]

    def prompt(self, subject: str) -> str:
        return self.template.format(subject)


IDENTITY = Composition("identity", "a {}", is_concept)
COMPOSITIONS = (
    # The composition: the star AND the whole background (brightness and texture).
    Composition("dark striped", "a {} on a dark striped background",
                lambda v: is_concept(v) and v.background == "dark striped"),
    # Light checkered is the toy world's held-out style: the model reaches "light" with it about once
    # in 16 pictures even from its own words, so (as tiforge.toy.model.is_hit does) only the
    # checkering is asked for; the star must still be there.
    Composition("light checkered", "a {} on a light checkered background",
                lambda v: is_concept(v) and v.texture == "checkered"),
)
# Measured with the model's own words only, to show why they are not in the editability score.
PROBES = {"two": "two {}s", "and a red circle": "a {} and a red circle"}


def share(images: list[Image.Image], composition: Composition) -> float:
    """Fraction of the pictures in which the judge finds what the composition asks for."""
    return sum(composition.passes(judge(im)) for im in images) / len(images)


def count_objects(image: Image.Image) -> int:
    """Separate coloured objects of at least the judge's smallest size, by the judge's colour test."""
    rgb = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    mx, mn = rgb.max(-1), rgb.min(-1)
    mask = ((mx - mn) / np.maximum(mx, 1e-6) > _SATURATION) & (mx > _VALUE)
    count = 0
    while True:
        component = _largest_component(mask)
        if component.sum() < MIN_AREA:
            return count
        count += 1
        mask &= ~component
