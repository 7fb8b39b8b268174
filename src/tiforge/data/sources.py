"""Where training pictures and captions come from, read into one list of `Record`s.

Sources: an image folder (captions from templates), an image folder with same-name caption files
(kohya's `<repeats>_<name>` subfolders included), invoke-training's JSONL file, a Hugging Face
`datasets` dataset, and kohya's dataset `.toml`. Each record carries its own augmentation and caption
options, because kohya sets them per subset.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """Training data that cannot be used; the message names the folder or files at fault."""


@dataclass(frozen=True)
class Options:
    """Per-record choices; kohya sets them per subset, the other sources from data_loader."""

    flip: bool = False
    random_crop: bool = False
    color_aug: bool = False
    shuffle_delimiter: str | None = None
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    alpha_mask: bool = False


@dataclass(frozen=True)
class HFImage:
    """A row of a `datasets` dataset; the dataset object travels with it (memory-mapped, cheap to pickle)."""

    dataset: Any = field(repr=False, compare=False)
    row: int
    column: str
    label: str

    @property
    def name(self) -> str:
        return f"{self.label}[{self.row}]"


@dataclass(frozen=True)
class Record:
    image: Path | HFImage
    caption: str | None  # None: the caption comes from a template
    mask: Path | HFImage | None = None
    repeats: int = 1
    options: Options = Options()
    caption_file: Path | None = None  # where the caption was expected (for messages)
    is_reg: bool = False  # a regularization picture (kohya): its own caption, no placeholder, prior_loss_weight

    @property
    def name(self) -> str:
        return self.image.name


def default_options(dl: TextualInversionSDDataLoaderConfig) -> Options:
    return Options(
        flip=dl.random_flip, random_crop=not dl.center_crop, color_aug=dl.color_aug,
        shuffle_delimiter=dl.shuffle_caption_delimiter, keep_tokens=dl.keep_tokens,
        caption_dropout_rate=dl.caption_dropout_rate, tag_dropout_rate=dl.caption_tag_dropout_rate,
    )


def find_records(dl: TextualInversionSDDataLoaderConfig, use_masks: bool = False,
                 prior_loss_weight: float = 1.0) -> list[Record]:
    ds = dl.dataset
    options = default_options(dl)
    if ds.type == "IMAGE_CAPTION_JSONL_DATASET":
        records = _jsonl_records(ds, options, use_masks)
    elif ds.type == "HF_HUB_IMAGE_CAPTION_DATASET":
        records = _hf_records(ds, options, use_masks)
    elif ds.type == "KOHYA_DATASET_CONFIG":
        records = _kohya_records(ds.config_path, use_masks)
    else:
        captioned = ds.type == "IMAGE_CAPTION_DIR_DATASET"
        ext = ds.caption_extension if captioned else None
        records = _folder_records(Path(ds.dataset_dir).expanduser(), ext, options, use_masks,
                                  "data_loader.dataset.dataset_dir")
    if not records:
        raise DatasetError(f"data_loader.dataset: no {'/'.join(IMAGE_SUFFIXES)} images found")
    from tiforge.data.regularization import add_regularization

    return add_regularization(records, dl, options, use_masks, prior_loss_weight)


# ------------------------------------------------------------------------------------- folders


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not p.stem.endswith("_mask") and p.parent.name != "masks")


def _mask_for(image: Path) -> Path | None:
    """A folder's mask for `image`: masks/<stem>.<any image suffix>, or <stem>_mask.png beside it."""
    for candidate in [image.parent / "masks" / (image.stem + s) for s in IMAGE_SUFFIXES] + [
        image.with_name(image.stem + "_mask.png")
    ]:
        if candidate.is_file():
            return candidate
    return None


def _folder_records(folder: Path, caption_ext: str | None, options: Options, use_masks: bool, field_name: str,
                    repeats: int = 1, class_tokens: str | None = None) -> list[Record]:
    if not folder.is_dir():
        raise DatasetError(f"{field_name} {folder}: no such folder")
    images = _images_in(folder)
    subfolders = [] if images else sorted(p for p in folder.iterdir() if p.is_dir() and _REPEATS_FOLDER.match(p.name))
    if subfolders:  # kohya's layout: <repeats>_<name>/ folders
        records = []
        for sub in subfolders:
            n, name = _REPEATS_FOLDER.match(sub.name).groups()
            records += _folder_records(sub, caption_ext, options, use_masks, field_name, int(n), class_tokens or name)
        return records
    if not images:
        raise DatasetError(
            f"{field_name} {folder}: no {'/'.join(IMAGE_SUFFIXES)} images found (nor kohya-style "
            "<repeats>_<name> subfolders)"
        )
    records = []
    for image in images:
        caption, caption_file = None, None
        if caption_ext is not None:
            caption_file = image.with_suffix(caption_ext)
            # kohya: the folder's class tokens caption an image without a caption file; otherwise the
            # missing file is reported by the dataset check (caption None with a caption_file)
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip() if caption_file.is_file() \
                else class_tokens
        records.append(Record(image, caption, _mask_for(image) if use_masks else None, repeats, options, caption_file))
    return records


# --------------------------------------------------------------------------------------- JSONL


def _jsonl_records(ds, options: Options, use_masks: bool) -> list[Record]:
    path = Path(ds.jsonl_path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data_loader.dataset.jsonl_path {path}: no such file")
    records, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{n}: not valid JSON ({err.msg})")
            continue
        if not isinstance(row, dict) or ds.image_column not in row:
            problems.append(f"{path}:{n}: no {ds.image_column!r} field (data_loader.dataset.image_column)")
            continue
        image = Path(row[ds.image_column]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        caption = row.get(ds.caption_column)
        if caption is None:
            problems.append(f"{path}:{n}: no {ds.caption_column!r} field (data_loader.dataset.caption_column)")
            continue
        mask = None
        if use_masks and row.get(ds.mask_column):
            mask = Path(row[ds.mask_column]).expanduser()
            mask = mask if mask.is_absolute() else path.parent / mask
        records.append(Record(image, str(caption).strip(), mask, 1, options))
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in {path}:\n  - " + "\n  - ".join(problems[:20]))
    return records


# ------------------------------------------------------------------------- Hugging Face datasets


def _load_hf_dataset(ds):
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "data_loader.dataset: HF_HUB_IMAGE_CAPTION_DATASET needs the `datasets` package "
            "(pip install 'tiforge[datasets]')"
        ) from None
    name = ds.dataset_name
    local = Path(name).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(local))  # saved with save_to_disk
        elif local.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(local), cache_dir=ds.hf_cache_dir)
        else:
            loaded = datasets.load_dataset(name, ds.dataset_config_name, cache_dir=ds.hf_cache_dir)
    except Exception as err:
        raise DatasetError(f"data_loader.dataset.dataset_name {name}: could not load it ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if ds.split not in loaded:
            raise DatasetError(f"data_loader.dataset.split {ds.split!r}: the dataset has splits {sorted(loaded)}")
        loaded = loaded[ds.split]
    return loaded


def _hf_records(ds, options: Options, use_masks: bool) -> list[Record]:
    data = _load_hf_dataset(ds)
    columns = data.column_names
    for field_name, column in (("image_column", ds.image_column), ("caption_column", ds.caption_column)) + (
        (("mask_column", ds.mask_column),) if use_masks else ()
    ):
        if column not in columns:
            raise DatasetError(f"data_loader.dataset.{field_name} {column!r}: the dataset's columns are {columns}")
    captions = data[ds.caption_column]
    label = Path(ds.dataset_name).name or ds.dataset_name
    return [
        Record(HFImage(data, i, ds.image_column, label), str(captions[i] or "").strip(),
               HFImage(data, i, ds.mask_column, label) if use_masks else None, 1, options)
        for i in range(len(data))
    ]


# ------------------------------------------------------------------------------------- kohya


def _kohya_records(config_path: str, use_masks: bool) -> list[Record]:
    from tiforge.data.kohya_toml import KohyaDatasetError, read_kohya_dataset_config

    try:
        datasets = read_kohya_dataset_config(config_path)
    except KohyaDatasetError as err:
        raise DatasetError(str(err)) from None
    records = []
    for dataset in datasets:
        for sub in dataset.subsets:
            options = Options(
                flip=sub.flip_aug, random_crop=sub.random_crop, color_aug=sub.color_aug,
                shuffle_delimiter=sub.caption_separator if sub.shuffle_caption else None,
                keep_tokens=sub.keep_tokens, caption_dropout_rate=sub.caption_dropout_rate,
                tag_dropout_rate=sub.caption_tag_dropout_rate, caption_prefix=sub.caption_prefix,
                caption_suffix=sub.caption_suffix, alpha_mask=sub.alpha_mask,
            )
            found = _folder_records(sub.image_dir, sub.caption_extension, options,
                                    use_masks and not sub.alpha_mask, f"{config_path}: image_dir",
                                    sub.num_repeats, sub.class_tokens)
            records += [replace(r, is_reg=True) for r in found] if sub.is_reg else found
    return records


def apply_kohya_dataset_settings(config):
    """A kohya .toml sets resolution, batch size and bucketing; they replace the config's own."""
    dl = config.data_loader
    if dl.dataset.type != "KOHYA_DATASET_CONFIG":
        return config
    from tiforge.data.kohya_toml import KohyaDatasetError, read_kohya_dataset_config

    try:
        first = read_kohya_dataset_config(dl.dataset.config_path)[0]
    except KohyaDatasetError as err:
        raise DatasetError(str(err)) from None
    dl_update: dict[str, Any] = {}
    update: dict[str, Any] = {}
    if first.resolution is not None:
        dl_update["resolution"] = list(first.resolution) if first.resolution[0] != first.resolution[1] \
            else first.resolution[0]
    if first.batch_size is not None:
        update["train_batch_size"] = first.batch_size
    if first.enable_bucket:
        h, w = first.resolution or dl.height_width
        from pydantic import ValidationError

        from tiforge.config.data_schema import AspectRatioBucketConfig

        try:
            dl_update["aspect_ratio_buckets"] = AspectRatioBucketConfig(
                target_resolution=int((h * w) ** 0.5), start_dim=first.min_bucket_reso, end_dim=first.max_bucket_reso,
                divisible_by=first.bucket_reso_steps, no_upscale=first.bucket_no_upscale,
            )
        except ValidationError as err:
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise DatasetError(f"{dl.dataset.config_path}: enable_bucket with resolution {h}x{w}, min/max_bucket_reso "
                               f"{first.min_bucket_reso}/{first.max_bucket_reso}, bucket_reso_steps "
                               f"{first.bucket_reso_steps}: {why}") from None
    if dl_update:
        update["data_loader"] = dl.model_copy(update=dl_update)
    return config.model_copy(update=update) if update else config
