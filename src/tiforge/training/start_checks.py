"""Checks at the start of training that need the model's tokenizer or the resumed position: what
would otherwise be truncated, overridden or skipped without a word."""

from __future__ import annotations

import logging
from pathlib import Path

from tiforge.data.sources import DatasetError

from tiforge.data.checks import MAX_TOKENS  # CLIP's window: start token, 75 caption tokens, end token

log = logging.getLogger("tiforge")



def token_window(max_token_length: int | None) -> int:
    """The tokens a caption may have, start and end token included: 77, or kohya's 150/225 + 2."""
    return MAX_TOKENS if max_token_length is None else max_token_length + 2


def check_caption_lengths(dataset, tokenizer, placeholder_ids, window: int = MAX_TOKENS) -> None:
    """Captions longer than the token window lose their end. Warn about them; refuse when the cut
    removes (some of) the placeholder's tokens, since those pictures would then train nothing.
    `window` is the token window length (kohya's max_token_length widens it: `token_window`)."""
    from tiforge.data.dataset import item_rng

    ids = set(placeholder_ids)
    long, cut, needed = [], [], 0
    first_index: dict[int, int] = {}
    for index, r in enumerate(dataset.record_of):
        first_index.setdefault(r, index)
    for r, record in enumerate(dataset.records):
        index = first_index.get(r, 0)
        caption = dataset.captioner(record.caption, item_rng(dataset.seed, 1, index), record)
        tokens = tokenizer(caption, add_special_tokens=True).input_ids
        if len(tokens) <= window:
            continue
        long.append(record.name)
        kept = set(tokens[: window - 1])  # the last place holds the end token
        if not ids <= kept and ids & set(tokens):
            cut.append(record.name)
            needed = max(needed, len(tokens) - 2)
    if cut:
        raise DatasetError(
            f"{len(cut)} caption(s) are longer than {window} tokens and the cut removes the placeholder, so those "
            f"pictures would train nothing: {', '.join(cut[:10])}{' ...' if len(cut) > 10 else ''}. Shorten them or "
            f"move the placeholder to the front{_wider_window_hint(needed, window)} (`tiforge dataset check` shows "
            "each caption's tokens)"
        )
    if long:
        log.warning("%d caption(s) are longer than %d tokens; their ends are cut off in training: %s%s",
                    len(long), window, ", ".join(long[:10]), " ..." if len(long) > 10 else "")


def _wider_window_hint(needed: int, window: int) -> str:
    """kohya's longer windows, where one fits: the longest caption at fault needs `needed` tokens."""
    fits = [n for n in (150, 225) if n + 2 > window]
    if not fits:
        return ""
    choice = next((n for n in fits if n >= needed), None)
    wanted = (f"; the longest of them needs {needed} tokens: max_token_length: {choice} fits it" if choice
              else f"; the longest of them needs {needed} tokens, more than even max_token_length: 225 holds")
    return (f", or encode longer captions with max_token_length: {' or '.join(map(str, fits))} (kohya's "
            f"--max_token_length){wanted}")


def warn_vector_count(config, num_vectors: int) -> None:
    """An explicit num_vectors that the initializer overrides (a phrase or file brings its own count)."""
    if "num_vectors" not in config.model_fields_set or config.num_vectors == num_vectors:
        return
    source = ("initial_embedding_file " + str(config.initial_embedding_file) if config.initial_embedding_file
              else f"initial_phrase {config.initial_phrase!r}")
    log.warning("num_vectors is %d, but %s holds %d vector(s): the %s wins, training %d vector(s)",
                config.num_vectors, source, num_vectors, source.split()[0], num_vectors)


def warn_nothing_left(checkpoint: Path, step: int, max_steps: int) -> None:
    if step >= max_steps:
        log.warning("%s is at step %d and this run is %d steps long (max_train_steps / max_train_epochs): "
                    "nothing is left to train. To train on, raise max_train_steps (e.g. --set max_train_steps=%d)", checkpoint, step, max_steps, step * 2)
