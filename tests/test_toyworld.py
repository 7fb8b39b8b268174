"""The toy world and its judge (no model needed)."""

import collections

import numpy as np
from PIL import Image

from tiforge.toy.model import concept_scenes
from tiforge.toy.world import HELD_OUT_OBJECT, HELD_OUT_STYLE, caption, judge, render, sample_scene


def test_rendering_is_deterministic():
    a = [np.asarray(render(sample_scene(np.random.default_rng(5)))) for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_judge_reads_back_every_rendered_scene():
    rng = np.random.default_rng(0)
    errors = collections.Counter()
    for i in range(600):
        s = sample_scene(rng, pretraining=i % 2 == 0)
        v = judge(render(s))
        errors.update(k for k in ("shape", "colour", "brightness", "texture") if getattr(v, k) != getattr(s, k))
    assert errors == collections.Counter(), errors


def test_judge_finds_nothing_in_an_empty_picture():
    v = judge(Image.new("RGB", (32, 32), (125, 125, 125)))
    assert v.shape is None and v.background == "grey"


def test_held_out_combinations_never_appear_in_pretraining():
    rng = np.random.default_rng(1)
    seen_objects, seen_styles = set(), set()
    for _ in range(5000):
        s = sample_scene(rng)
        seen_objects.add((s.colour, s.shape))
        seen_styles.add((s.brightness, s.texture))
        c = caption(s, rng)
        assert c.startswith("a ") and s.colour in c and s.shape in c
    assert HELD_OUT_OBJECT not in seen_objects and len(seen_objects) == 23
    assert HELD_OUT_STYLE not in seen_styles and len(seen_styles) == 8


def test_concept_pictures_show_the_concept():
    assert all((s.colour, s.shape) == HELD_OUT_OBJECT for s in concept_scenes("purple-star", 6, 0))
    assert all((s.brightness, s.texture) == HELD_OUT_STYLE for s in concept_scenes("light-checkered", 6, 0))
