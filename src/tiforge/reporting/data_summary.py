"""What the run trains on, as the report shows it: each picture, its caption as trained and the
caption's token ids, the placeholder's ids marked."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tiforge.data.dataset import item_rng
from tiforge.data.images import open_image
from tiforge.embeddings.vocabulary import token_text
from tiforge.reporting.images import thumbnail_uri

log = logging.getLogger(__name__)

SHOWN = 48  # pictures listed; a larger set is counted, not shown


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    placeholder: bool


@dataclass(frozen=True)
class Picture:
    name: str
    thumbnail: str  # a data: URI ("" when the picture cannot be read now)
    original_caption: str | None
    caption: str  # as trained in the first epoch (templates and tag shuffling draw again each epoch)
    tokens: list[Token]
    cut: bool  # longer than the token window: training sees only its start
    repeats: int
    regularization: bool


@dataclass(frozen=True)
class DataSummary:
    pictures: list[Picture]
    total: int
    placeholder_ids: list[int]


def summarize(dataset, placeholders, window: int) -> DataSummary:
    ids = {i for p in placeholders for i in p.ids}
    tokenizer = dataset.tokenizers[0]
    first_index = {}
    for index, r in enumerate(dataset.record_of):
        first_index.setdefault(r, index)
    pictures = [_picture(dataset, r, first_index.get(r, 0), tokenizer, ids, window)
                for r in range(min(SHOWN, len(dataset.records)))]
    return DataSummary(pictures, len(dataset.records), sorted(ids))


def _picture(dataset, r: int, index: int, tokenizer, placeholder_ids: set[int], window: int) -> Picture:
    record = dataset.records[r]
    # The same draw as the training item (epoch 1, this index): the caption comes first from its generator.
    caption = dataset.captioner(record.caption, item_rng(dataset.seed, 1, index), record)
    ids = tokenizer(caption, truncation=False).input_ids
    tokens = [Token(i, token_text(tokenizer, i), i in placeholder_ids) for i in ids]
    try:
        thumb = thumbnail_uri(open_image(record.image))
    except (OSError, ValueError) as err:
        log.warning("report: %s cannot be read for its thumbnail (%s)", record.name, err)
        thumb = ""
    return Picture(record.name, thumb, record.caption, caption, tokens, len(ids) > window, record.repeats,
                   record.is_reg)
