"""kohya's regularization pictures (`--reg_data_dir`, or `is_reg = true` subsets of a dataset .toml) and
the diffusers example's `--repeats`.

Regularization pictures train with their own captions (a caption file, else the folder's class words)
at `prior_loss_weight`. kohya balances them against the training pictures: their repeats are raised
(or some are left out) until they count as many per epoch as the training pictures do, repeats
included. Their captions carry no placeholder, so their loss sends no gradient into the vectors: they
only dilute the concept's gradient in the batch average. With caption templates (kohya's
--use_object_template / --use_style_template) kohya's textual-inversion script replaces every
caption by a template, theirs too: then they do train the placeholder, towards the class pictures.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from tiforge.data.sources import DatasetError, Options, Record, _folder_records, _images_in

log = logging.getLogger("tiforge")


def balance_regularization(records: list[Record]) -> list[Record]:
    """kohya's balance: regularization pictures are taken in turn with their folder's repeats until they
    reach the training pictures' count; if they fall short, each gets one more repeat in turn until
    they do. Those not reached are left out."""
    train = [r for r in records if not r.is_reg]
    reg = [r for r in records if r.is_reg]
    target = sum(r.repeats for r in train)
    repeats: dict[int, int] = {}
    counted, first_round = 0, True
    while reg and counted < target:
        for i, record in enumerate(reg):
            repeats[i] = record.repeats if first_round else repeats[i] + 1
            counted += record.repeats if first_round else 1
            if counted >= target:
                break
        first_round = False
    return train + [replace(reg[i], repeats=n) for i, n in repeats.items()]


def _reg_folder_records(folder: Path, caption_ext: str, options: Options, use_masks: bool) -> list[Record]:
    where = "data_loader.reg_data_dir"
    if folder.is_dir() and _images_in(folder):
        raise DatasetError(f"{where} {folder}: put the regularization pictures in <repeats>_<class> subfolders "
                           "(kohya's layout, e.g. 1_woman/); the class words caption pictures without a caption file")
    return [replace(r, is_reg=True) for r in _folder_records(folder, caption_ext, options, use_masks, where)]


def add_regularization(records: list[Record], dl, options: Options, use_masks: bool,
                       prior_loss_weight: float = 1.0) -> list[Record]:
    """The training records with --repeats applied, plus the balanced regularization records."""
    if dl.repeats != 1:
        records = [replace(r, repeats=r.repeats * dl.repeats) for r in records]
    if dl.reg_data_dir:
        caption_ext = getattr(dl.dataset, "caption_extension", None) or ".caption"
        records = records + _reg_folder_records(Path(dl.reg_data_dir).expanduser(), caption_ext, options, use_masks)
    if not any(r.is_reg for r in records):
        return records
    found = sum(r.is_reg for r in records)
    balanced = balance_regularization(records)
    reg = [r for r in balanced if r.is_reg]
    train_count = sum(r.repeats for r in balanced if not r.is_reg)
    if dl.uses_templates:
        effect = ("captioned by the caption templates like the training pictures (kohya's textual-inversion script "
                  "replaces every caption by a template): so they train the placeholder too, towards these pictures")
    else:
        effect = ("captioned by their own captions or class words. They carry no placeholder, so they send no "
                  "gradient into the embedding: they only dilute the concept's gradient")
    log.info("regularization: %d of %d picture(s), %d per epoch with repeats (balanced to the %d training pictures "
             "per epoch, as kohya does), weighted by prior_loss_weight=%g; %s", len(reg), found,
             sum(r.repeats for r in reg), train_count, prior_loss_weight, effect)
    if len(reg) < found:
        log.warning("regularization: %d picture(s) are left out: there are more than training pictures (kohya "
                    "leaves them out too)", found - len(reg))
    return balanced


def loss_weights(batch: dict, prior_loss_weight: float):
    """Per-sample loss weights of a batch: prior_loss_weight for regularization pictures, else 1 (kohya's);
    None when the data has no regularization pictures."""
    if "is_reg" not in batch:
        return None
    is_reg = batch["is_reg"]
    return 1.0 + is_reg.float() * (prior_loss_weight - 1.0)
