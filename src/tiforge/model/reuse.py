"""Keeping a loaded model for the next run of a queue (`tiforge train-many`): one load, many concepts.

A run changes what it borrows: it adds its placeholder tokens to the tokenizers, splices its vectors
into the text encoders, may drop the VAE's encoder after caching latents, and may change the noise
scheduler's settings. So each run gets the same frozen networks but fresh copies of the small parts
(tokenizers, scheduler), the vocabulary embedding put back, and the VAE whole again; a run from the
cache trains exactly as a run from a fresh load (tests/test_several_embeddings.py checks bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Iterator

_cache: dict[tuple, "_Kept"] | None = None  # None: not inside keep_models_loaded()


@dataclasses.dataclass
class _Kept:
    parts: Any  # as loaded, the pristine tokenizers and scheduler
    vae_halves: tuple[Any, Any]  # encoder, quant_conv


@contextlib.contextmanager
def keep_models_loaded() -> Iterator[None]:
    """Inside: load_sd_components hands out the model it loaded before for the same arguments."""
    global _cache
    outer, _cache = _cache, {}
    try:
        yield
    finally:
        _cache = outer


def reused(key: tuple):
    """A fresh view of the model loaded before under `key`, or None (not kept, or not inside)."""
    kept = _cache.get(key) if _cache is not None else None
    if kept is None:
        return None
    from tiforge.model.placeholders import PlaceholderEmbedding

    parts = kept.parts
    for _, _, encoder in parts.text_encoders:
        embedding = encoder.get_input_embeddings()
        if isinstance(embedding, PlaceholderEmbedding):
            encoder.set_input_embeddings(embedding.base)
        encoder.requires_grad_(False)
    if parts.vae is not None:
        parts.vae.encoder, parts.vae.quant_conv = kept.vae_halves
    return dataclasses.replace(parts, tokenizer=copy.deepcopy(parts.tokenizer),
                               tokenizer_2=copy.deepcopy(parts.tokenizer_2),
                               noise_scheduler=copy.deepcopy(parts.noise_scheduler))


def keep(key: tuple, parts) -> Any:
    """Remember `parts` (inside keep_models_loaded) and return the view the first run trains with."""
    if _cache is None:
        return parts
    vae = parts.vae
    _cache.clear()  # one model at a time: a queue that switches models does not hold them all in memory
    _cache[key] = _Kept(parts, (vae.encoder, vae.quant_conv) if vae is not None else (None, None))
    return reused(key)
