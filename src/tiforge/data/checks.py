"""Checking training data before hours are spent on it (`tiforge dataset check`, and the start of
every `tiforge train`).

Every file is opened and fully decoded once: unreadable, truncated and empty files, missing caption
files and masks that do not fit their image are named; the run then goes on without them or stops
before training (`data_loader.on_bad_image`). Odd but usable files (CMYK, 16-bit, palette,
EXIF-rotated, smaller than the training size) are noted and handled.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tiforge.data.images import has_alpha, load_mask, open_image
from tiforge.data.sources import DatasetError, HFImage, Record

log = logging.getLogger(__name__)
MAX_TOKENS = 77


@dataclass
class Scan:
    records: list[Record]  # the usable ones
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # (height, width) per usable record
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, what is wrong): left out
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done about it)


def _where(source: Path | HFImage) -> str:
    return source.name if isinstance(source, HFImage) else str(source)


def _check_one(record: Record, resolution: tuple[int, int], use_masks: bool) -> tuple[str | None, list[str], tuple]:
    """(problem or None, notes, (height, width))."""
    if isinstance(record.image, Path):
        if not record.image.is_file():
            return "file not found", [], ()
        if record.image.stat().st_size == 0:
            return "empty file (0 bytes)", [], ()
    if record.caption is None and record.caption_file is not None:
        return f"no caption file {record.caption_file.name}", [], ()
    try:
        im = open_image(record.image)
    except Exception as err:
        return f"unreadable or truncated image ({type(err).__name__}: {err})", [], ()
    notes = []
    if im.mode in ("CMYK", "I;16", "I;16B", "I;16L", "I", "F", "P"):
        notes.append({"CMYK": "CMYK image: converted to RGB", "P": "palette image: converted to RGB"}.get(
            im.mode, f"{im.mode} (16-bit/float) image: scaled to 8-bit RGB"))
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        notes.append("transparent image: transparent parts train as white")
    if isinstance(record.image, Path):
        with Image.open(record.image) as raw:
            orientation = raw.getexif().get(0x0112, 1)
        if orientation not in (1, None):
            notes.append(f"EXIF orientation {orientation}: rotated upright")
    size = (im.height, im.width)
    if size[0] < resolution[0] or size[1] < resolution[1]:
        notes.append(f"{im.width}x{im.height} is smaller than the training size {resolution[1]}x{resolution[0]}: "
                     "it is enlarged (blurrier than a large picture)")
    if use_masks and record.mask is not None:
        try:
            mask = load_mask(record, im)
        except Exception as err:
            return f"mask {_where(record.mask)} unreadable ({type(err).__name__}: {err})", notes, size
        if mask.size != (im.width, im.height):
            return (f"mask {_where(record.mask)} is {mask.size[0]}x{mask.size[1]} but the image is "
                    f"{im.width}x{im.height}"), notes, size
    elif use_masks:
        notes.append("no mask file: its alpha channel is the mask" if has_alpha(im) else
                     "no mask (masks/<name>.png, <name>_mask.png or an alpha channel): the whole picture trains")
    return None, notes, size


def scan_records(records: list[Record], resolution: tuple[int, int], use_masks: bool, progress=None) -> Scan:
    scan = Scan(records=[])
    for record in progress(records) if progress else records:
        problem, notes, size = _check_one(record, resolution, use_masks)
        if problem:
            scan.problems.append((record.name, problem))
            continue
        scan.sizes[len(scan.records)] = size
        scan.records.append(record)
        scan.notes += [(record.name, n) for n in notes]
    return scan


def apply_policy(scan: Scan, on_bad_image: str) -> list[Record]:
    """Stop before training, or go on without the bad items; either way, say which they are."""
    if scan.problems:
        listing = "\n  - ".join(f"{name}: {what}" for name, what in scan.problems[:50])
        more = f"\n  ... and {len(scan.problems) - 50} more" if len(scan.problems) > 50 else ""
        if on_bad_image == "stop" or not scan.records:
            why = "data_loader.on_bad_image is stop" if scan.records else "no usable item is left"
            raise DatasetError(f"{len(scan.problems)} bad training item(s) ({why}); fix or remove them:\n  - "
                               f"{listing}{more}")
        log.warning("training without %d bad item(s) (data_loader.on_bad_image: skip):\n  - %s%s",
                    len(scan.problems), listing, more)
    _warn_about_notes(scan)
    return scan.records


def _warn_about_notes(scan: Scan) -> None:
    """Notes that change what is learned are warnings, said once with a count; the rest are INFO."""
    unmasked = [name for name, note in scan.notes if note.startswith("no mask (")]
    small = [(name, note.split(" is ")[0]) for name, note in scan.notes if "smaller than the training size" in note]
    if unmasked and len(unmasked) == len(scan.records):
        log.warning("use_masks is on, but none of the %d pictures has a mask (masks/<name>.png, <name>_mask.png or "
                    "an alpha channel): training unmasked, as with use_masks: false", len(unmasked))
    if small:
        log.warning("%d picture(s) are smaller than the training size and are enlarged (blurrier than a large "
                    "picture): %s%s", len(small), ", ".join(f"{n} ({size})" for n, size in small[:10]),
                    " ..." if len(small) > 10 else "")
    rest = [(name, note) for name, note in scan.notes
            if not (note.startswith("no mask (") and len(unmasked) == len(scan.records))
            and "smaller than the training size" not in note]
    for name, note in rest[:20]:
        log.info("%s: %s", name, note)


# ---------------------------------------------------------------------------------- the report


def token_report(tokenizer, caption: str, placeholder_ids: set[int], window: int = MAX_TOKENS) -> tuple[str, int]:
    """Ids as trained, the placeholder's in [brackets], and the count against the token window (77, or
    max_token_length + 2)."""
    ids = tokenizer(caption, add_special_tokens=True).input_ids
    shown = " ".join(f"[{i}]" if i in placeholder_ids else str(i) for i in ids[:window])
    return shown + (" ..." if len(ids) > window else ""), len(ids)


def report(config, verbose_items: int | None = None) -> str:
    """What `tiforge dataset check` prints: per item the caption as trained, its token ids and length,
    then counts, sizes, buckets, repeats and steps per epoch, then every problem."""
    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.data.dataset import TextualInversionDataset, item_rng
    from tiforge.data.captions import Captioner, check_captions_hold_placeholder, check_every_token_trained
    from tiforge.data.sources import apply_kohya_dataset_settings, find_records
    from tiforge.model.placeholders import add_placeholder

    config = apply_kohya_dataset_settings(config)
    dl = config.data_loader
    records = find_records(dl, config.use_masks, config.prior_loss_weight)
    scan = scan_records(records, dl.height_width, config.use_masks)
    # Every SD/SDXL tokenizer shares CLIP's vocabulary: the ids are the same without loading the model.
    tokenizer = load_clip_tokenizer()
    placeholder = add_placeholder(tokenizer, config.placeholder_token, max(config.num_vectors, _phrase_len(config)))
    # further embeddings (a phrase's or a file's count is only known with the model: the entry's count here)
    more = [add_placeholder(tokenizer, e.placeholder_token, e.num_vectors) for e in config.additional_embeddings]
    lines = []
    if scan.records:
        try:
            check_captions_hold_placeholder(scan.records, config.all_placeholder_tokens, dl.uses_templates)
            check_every_token_trained(scan.records, [placeholder, *more], dl.uses_templates)
        except DatasetError as err:
            lines.append(f"ERROR: {err}")
        dataset = TextualInversionDataset(scan.records, dl, Captioner(dl, placeholder, *more), [tokenizer],
                                          seed=config.seed or 0, sizes=scan.sizes, use_masks=config.use_masks)
        ids = {i for p in (placeholder, *more) for i in p.ids}
        window = MAX_TOKENS if config.max_token_length is None else config.max_token_length + 2
        over = 0
        lines.append("items (caption as trained in epoch 1; [ids] are the placeholder's vectors):")
        shown = 0
        for index in range(len(dataset)):
            r = dataset.record_of[index]
            if index and r == dataset.record_of[index - 1]:
                continue  # a repeat of the same record
            record = dataset.records[r]
            caption = dataset.captioner(record.caption, item_rng(dataset.seed, 1, index), record)
            shown_ids, count = token_report(tokenizer, caption, ids, window)
            over += count > window
            if verbose_items is None or shown < verbose_items:
                h, w = scan.sizes[r]
                th, tw = dataset.targets[r]
                lines.append(f"  {record.name}  {w}x{h} -> {tw}x{th}" + (f"  x{record.repeats}" if record.repeats > 1 else ""))
                lines.append(f"    caption: {caption!r}")
                lines.append(f"    tokens:  {count}/{window}{'  TRUNCATED' if count > window else ''}: {shown_ids}")
            shown += 1
        if verbose_items is not None and shown > verbose_items:
            lines.append(f"  ... {shown - verbose_items} more (--items to show more)")
        per_epoch = len(dataset)
        batches = -(-per_epoch // config.train_batch_size)
        if dl.aspect_ratio_buckets is not None:
            from tiforge.data.dataset import EpochBatchSampler

            batches = EpochBatchSampler(dataset, config.train_batch_size, 0).batches_per_epoch()
        steps = -(-batches // config.gradient_accumulation_steps)
        heights = [s[0] for s in scan.sizes.values()]
        widths = [s[1] for s in scan.sizes.values()]
        lines += [
            "",
            f"images: {len(scan.records)} usable, {len(scan.problems)} bad; {per_epoch} items per epoch "
            f"(repeats: {dict(sorted(Counter(r.repeats for r in scan.records).items()))})",
            f"sizes: width {min(widths)}..{max(widths)}, height {min(heights)}..{max(heights)}",
            "training sizes: " + ", ".join(f"{w}x{h}: {n}" for (h, w), n in
                                           sorted(Counter(dataset.targets[r] for r in dataset.record_of).items())),
            f"batch {config.train_batch_size} x accumulation {config.gradient_accumulation_steps}: {batches} batches, "
            f"{steps} optimizer steps per epoch (one process)",
        ]
        if over:
            lines.append(f"WARNING: {over} caption(s) exceed {window} tokens and are truncated (the end is cut)")
    if scan.notes:
        lines += ["", "handled:"] + [f"  {name}: {note}" for name, note in scan.notes]
    if scan.problems:
        action = "training stops before it starts" if dl.on_bad_image == "stop" else "training goes on without them"
        lines += ["", f"bad items ({action}; data_loader.on_bad_image: {dl.on_bad_image}):"]
        lines += [f"  {name}: {what}" for name, what in scan.problems]
    return "\n".join(lines)


def _phrase_len(config) -> int:
    if config.initial_phrase:
        from tiforge.model.clip_tokenizer import load_clip_tokenizer

        return len(load_clip_tokenizer().encode(config.initial_phrase, add_special_tokens=False))
    return 1
