"""Captions as trained: templates (presets, lists, A1111 files), the data's own captions, kohya's tag
shuffling and dropout, prefixes and suffixes; then the placeholder expanded into its vectors' tokens.

With several embeddings in a run, a caption may name any of their tokens (a subject and a style
together); every token in it is expanded. A template's `{}` (A1111's `[name]`) is the token of the
embedding the picture belongs to: the additional embedding whose token names one of the picture's
folders (`<my-style>/`, `my-style/` or kohya's `10_my-style/`, the nearest folder first), else the
first embedding."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.data.sources import DatasetError, Record, default_options
from tiforge.data.templates import PRESETS, read_a1111_templates
from tiforge.model.placeholders import Placeholder

log = logging.getLogger(__name__)


def check_captions_hold_placeholder(records: list[Record], placeholder: str | list[str],
                                    uses_templates: bool) -> list[str]:
    """Names the caption files that never mention the placeholder (with several embeddings: any of
    their tokens); they teach it nothing.

    Returns the offending file names (a warning); raises when no caption mentions it at all.
    """
    if uses_templates:
        return []
    tokens = [placeholder] if isinstance(placeholder, str) else list(placeholder)
    placeholder = tokens[0] if len(tokens) == 1 else " / ".join(tokens)
    records = [r for r in records if not r.is_reg]  # regularization captions never hold it
    without = [r.name for r in records if not any(t in (r.caption or "") for t in tokens)]
    if len(without) == len(records):
        raise DatasetError(
            f"none of the {len(records)} captions contains the placeholder {placeholder!r}, so training would "
            f"teach it nothing (e.g. {', '.join(without[:5])}). Add {placeholder!r} to the captions, or set "
            "data_loader.caption_preset (object/style) with keep_original_captions: true"
        )
    if without:
        log.warning(
            "%d of %d captions do not contain the placeholder %r and will not train it: %s",
            len(without), len(records), placeholder, ", ".join(without[:10]),
        )
    return without


def check_every_token_trained(records: list[Record], placeholders: list[Placeholder], uses_templates: bool) -> None:
    """With several embeddings, each must be named by some caption, or (with templates) own a picture
    folder; otherwise it would learn nothing."""
    records = [r for r in records if not r.is_reg]
    for placeholder in placeholders if len(placeholders) > 1 else []:
        named = any(placeholder.token in (r.caption or "") for r in records)
        owns = uses_templates and any(owner_of(r, placeholders) is placeholder for r in records)
        if not (named or owns):
            raise DatasetError(
                f"embedding {placeholder.token!r}: no caption names it"
                + (" and no picture folder is named for it" if uses_templates else "")
                + f", so training would teach it nothing. Add {placeholder.token!r} to the captions of its pictures"
                + (f", or put them in a folder named {placeholder.token.strip('<>')!r}" if uses_templates else "")
            )


_KOHYA_REPEATS = re.compile(r"^\d+_")


def owner_of(record: Record | None, placeholders: list[Placeholder]) -> Placeholder:
    """The embedding a picture belongs to for templates: the additional one named by its nearest such
    folder, else the first."""
    more = placeholders[1:]
    if more and record is not None and isinstance(record.image, Path):
        for folder in record.image.parents:
            name = _KOHYA_REPEATS.sub("", folder.name)
            for placeholder in more:
                if name in (placeholder.token, placeholder.token.strip("<>")):
                    return placeholder
    return placeholders[0]


class Captioner:
    """Builds the caption a record is trained with, then expands the placeholders into their vectors."""

    def __init__(self, dl: TextualInversionSDDataLoaderConfig, placeholder: Placeholder, *more: Placeholder):
        if dl.caption_templates_file:
            self.templates = read_a1111_templates(dl.caption_templates_file)
        else:
            self.templates = PRESETS[dl.caption_preset] if dl.caption_preset else dl.caption_templates
        self.keep_original = dl.keep_original_captions
        self.options = default_options(dl)  # for callers without a record; records carry their own
        self.placeholder = placeholder
        self.placeholders = [placeholder, *more]

    def __call__(self, original: str | None, rng: torch.Generator | None = None, record: Record | None = None) -> str:
        options = record.options if record is not None else self.options
        caption = _tags(original, options, rng) if original else ""
        if options.caption_dropout_rate and _chance(rng) < options.caption_dropout_rate:
            caption = ""
        if self.templates:  # kohya's TI templates replace every caption, regularization pictures' too
            template = self.templates[int(torch.randint(len(self.templates), (), generator=rng).item())]
            token = owner_of(record, self.placeholders).token
            if "[name]" in template or "[filewords]" in template:  # an A1111 template line
                words = original if original is not None else _file_words(record)
                return self.expand(template.replace("[name]", token).replace("[filewords]", words or ""))
            prefix = template.format(token)
            caption = f"{prefix} {caption}".strip() if self.keep_original else prefix
        caption = " ".join(p for p in (options.caption_prefix, caption, options.caption_suffix) if p)
        return self.expand(caption)

    def expand(self, caption: str) -> str:
        from tiforge.model.text_conditioning import expand_all

        return expand_all(self.placeholders, caption)


def _chance(rng: torch.Generator | None) -> float:
    return float(torch.rand((), generator=rng))


def _tags(caption: str, options, rng) -> str:
    """Shuffling on a delimiter, and kohya's tag handling: the first keep_tokens tags stay, the rest
    may drop out or shuffle."""
    delimiter = options.shuffle_delimiter
    sep = delimiter or ","
    if not (delimiter or options.tag_dropout_rate):
        return caption
    parts = [p.strip() for p in caption.split(sep) if p.strip()]
    fixed, rest = parts[: options.keep_tokens], parts[options.keep_tokens :]
    if options.tag_dropout_rate:
        rest = [p for p in rest if _chance(rng) >= options.tag_dropout_rate]
    if delimiter and rest:
        rest = [rest[i] for i in torch.randperm(len(rest), generator=rng).tolist()]
    return f"{sep} ".join(fixed + rest)


def _file_words(record: Record | None) -> str:
    """A1111's [filewords] without a caption file: the file name's words."""
    if record is None:
        return ""
    stem = Path(record.name).stem
    return " ".join(w for w in stem.replace("_", " ").replace("-", " ").split() if not w.isdigit())
