"""The toy world and its judge (no model needed)."""

import collections

import numpy as np

from tiforge.toyworld import (
    BACKGROUNDS,
    HELD_OUT_BACKGROUND,
    HELD_OUT_SHAPE,
    SHAPES,
    caption,
    judge,
    render,
    sample_scene,
)


def test_rendering_is_deterministic():
    a = [np.asarray(render(sample_scene(np.random.default_rng(5)))) for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_judge_reads_back_every_rendered_scene():
    rng = np.random.default_rng(0)
    errors = collections.Counter()
    for _ in range(600):
        s = sample_scene(rng, ring_rate=0.2, checkered_rate=0.2)
        v = judge(render(s))
        errors.update(k for k in ("shape", "colour", "background") if getattr(v, k) != getattr(s, k))
    assert errors == collections.Counter(), errors


def test_judge_finds_nothing_in_an_empty_picture():
    from PIL import Image

    v = judge(Image.new("RGB", (32, 32), (125, 125, 125)))
    assert v.shape is None and v.background == "grey"


def test_held_out_concepts_are_never_named_in_captions():
    rng = np.random.default_rng(1)
    words = collections.Counter()
    for _ in range(3000):
        s = sample_scene(rng)
        c = caption(s, rng)
        words.update(c.split())
        if s.shape == HELD_OUT_SHAPE:
            assert not any(shape in c for shape in SHAPES), c
        if s.background == HELD_OUT_BACKGROUND:
            assert "background" not in c, c
    assert HELD_OUT_SHAPE not in words and HELD_OUT_BACKGROUND not in words
    assert all(words[b] > 0 for b in BACKGROUNDS if b != HELD_OUT_BACKGROUND)
