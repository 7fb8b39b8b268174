"""The data preview before training: each picture with its caption as it will be trained (epoch 1),
that caption's token ids with the placeholder's marked, and the dataset check's warnings and bad
files - the same steps as `tiforge dataset check` (data/checks.py), as data for the page."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import uuid
from pathlib import Path

from tiforge.data.checks import MAX_TOKENS, _phrase_len, _warn_about_notes, scan_records
from tiforge.data.sources import DatasetError
from tiforge.web.errors import ApiError

MAX_ITEMS = 500
THUMB = 256


class Previews:
    """The picture files each preview listed: thumbnails are made only of those."""

    def __init__(self, keep: int = 20):
        self._lock = threading.Lock()
        self._files: dict[str, list[Path | None]] = {}
        self.keep = keep

    def add(self, files: list[Path | None]) -> str:
        with self._lock:
            preview_id = uuid.uuid4().hex
            self._files[preview_id] = files
            while len(self._files) > self.keep:
                self._files.pop(next(iter(self._files)))
            return preview_id

    def file(self, preview_id: str, index: int) -> Path:
        with self._lock:
            files = self._files.get(preview_id, [])
        if not 0 <= index < len(files) or files[index] is None:
            raise ApiError(404, "no such picture in that preview")
        return files[index]


@contextlib.contextmanager
def said_by_the_check():
    """What the data check logs (warnings and per-file notes), collected in its own words."""
    said: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("tiforge.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _tokens(tokenizer, caption: str, placeholder_ids: set[int], window: int) -> list[dict]:
    ids = tokenizer(caption, add_special_tokens=True).input_ids[:window]
    return [{"id": i, "text": tokenizer.convert_ids_to_tokens(i).replace("</w>", ""), "placeholder": i in placeholder_ids}
            for i in ids]


def _items(config, scan, warnings: list[str]) -> tuple[list[dict], list[Path | None]]:
    from tiforge.data.captions import Captioner, check_captions_hold_placeholder
    from tiforge.data.dataset import TextualInversionDataset, item_rng
    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.model.placeholders import add_placeholder

    dl = config.data_loader
    # Every SD/SDXL tokenizer shares CLIP's vocabulary: the ids are the same without loading the model.
    tokenizer = load_clip_tokenizer()
    placeholder = add_placeholder(tokenizer, config.placeholder_token, max(config.num_vectors, _phrase_len(config)))
    try:
        check_captions_hold_placeholder(scan.records, placeholder.token, dl.uses_templates)
    except DatasetError as err:
        warnings.append(str(err))
    dataset = TextualInversionDataset(scan.records, dl, Captioner(dl, placeholder), [tokenizer],
                                      seed=config.seed or 0, sizes=scan.sizes, use_masks=config.use_masks)
    window = MAX_TOKENS if config.max_token_length is None else config.max_token_length + 2
    items, files = [], []
    for index in range(len(dataset)):
        r = dataset.record_of[index]
        if (index and r == dataset.record_of[index - 1]) or len(items) >= MAX_ITEMS:
            continue  # a repeat of the same picture
        record = dataset.records[r]
        caption = dataset.captioner(record.caption, item_rng(dataset.seed, 1, index), record)
        tokens = _tokens(tokenizer, caption, set(placeholder.ids), window + 1)
        if len(tokens) > window:
            warnings.append(f"{record.name}: the caption is longer than {window} tokens; the end is cut")
        files.append(record.image if isinstance(record.image, Path) else None)
        items.append({"file": record.name, "caption": caption, "tokens": tokens[:window], "repeats": record.repeats})
    return items, files


def preview(config, previews: Previews) -> dict:
    from tiforge.data.sources import apply_kohya_dataset_settings, find_records

    config = apply_kohya_dataset_settings(config)
    try:
        records = find_records(config.data_loader, config.use_masks, config.prior_loss_weight)
    except DatasetError as err:
        raise ApiError(400, str(err), "data_loader.dataset") from None
    scan = scan_records(records, config.data_loader.height_width, config.use_masks)
    with said_by_the_check() as warnings:
        _warn_about_notes(scan)
        items, files = _items(config, scan, warnings) if scan.records else ([], [])
    preview_id = previews.add(files)
    for n, item in enumerate(items):
        item["image"] = f"/api/data/thumb?id={n}&job={preview_id}" if files[n] is not None else None
    return {"items": items, "warnings": warnings, "count": len(scan.records),
            "bad_files": [{"file": name, "reason": what} for name, what in scan.problems]}


def thumbnail(path: Path) -> bytes:
    from tiforge.data.images import open_image

    image = open_image(path)
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
