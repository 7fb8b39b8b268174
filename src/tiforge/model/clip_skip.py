"""Clip skip (kohya's --clip_skip, A1111's "Clip skip") checked against the loaded text encoder, one
rule for `train` and `generate`: a skip past the encoder's first layer would index a hidden state
that does not exist, and SDXL has no clip skip at all."""

from __future__ import annotations

import logging

log = logging.getLogger("tiforge")


def checked_clip_skip(clip_skip: int | None, text_encoder, is_sdxl: bool, family: str,
                      name: str = "clip_skip") -> int | None:
    """The clip skip the prompts are encoded with (None: the last layer), or a ConfigError naming
    `name` (the field or flag the value came from). Logs what it does and what it ignores."""
    from tiforge.config.schema import ConfigError

    if clip_skip is None:
        return None
    if clip_skip < 1:
        raise ConfigError(f"{name}: {clip_skip} is not a clip skip; use 1 (the last layer, the default) or more")
    if is_sdxl:
        log.warning("%s: SDXL always reads the penultimate layer of both text encoders; clip_skip %d is ignored "
                    "(as kohya does)", name, clip_skip)
        return None
    layers = text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise ConfigError(f"{name}: {clip_skip} is more than the text encoder's {layers} layers "
                          f"(use 1 to {layers}; 2 is the usual skip)")
    if clip_skip > 1:
        log.info("clip_skip %d: conditioning on hidden state %d from the end, through the final layer norm",
                 clip_skip, clip_skip)
        if family == "SD 2.x":
            log.warning("clip_skip %d on SD 2.x: its text encoder already ends at OpenCLIP's penultimate layer, "
                        "so this skips %d more (kohya warns the same); SD 2.x is usually trained without it",
                        clip_skip, clip_skip - 1)
    return clip_skip
