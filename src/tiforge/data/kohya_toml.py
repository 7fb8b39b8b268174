"""kohya-ss sd-scripts dataset `.toml` files (`--dataset_config`), read as kohya reads them.

    [general]                 options for every dataset and subset
    [[datasets]]              resolution, batch_size, bucketing; subset options as defaults
      [[datasets.subsets]]    image_dir, num_repeats, caption and augmentation options

An option set closer to the subset wins. Unknown keys are refused (kohya refuses them too), with the
key's place in the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBSET_KEYS = {
    "image_dir", "num_repeats", "class_tokens", "caption_extension", "keep_tokens", "shuffle_caption",
    "caption_separator", "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs",
    "flip_aug", "color_aug", "random_crop", "caption_prefix", "caption_suffix", "alpha_mask", "is_reg",
    "token_warmup_min", "token_warmup_step", "metadata_file", "keep_tokens_separator", "secondary_separator",
    "enable_wildcard", "face_crop_aug_range", "cache_info",
}
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale", "subsets"}
# Keys kohya knows that tiforge does not act on: refused with the reason instead of ignored.
_REFUSED = {
    "metadata_file": "fine-tuning metadata .json files are not read; use image_dir with caption files",
    "caption_dropout_every_n_epochs": "not supported; use caption_dropout_rate",
    "token_warmup_min": "token warmup is not supported",
    "token_warmup_step": "token warmup is not supported",
    "keep_tokens_separator": "not supported; use keep_tokens",
    "secondary_separator": "not supported",
    "enable_wildcard": "wildcards are not supported",
    "face_crop_aug_range": "face crops are not supported",
}


class KohyaDatasetError(ValueError):
    """A dataset .toml tiforge cannot use; the message names the file and the key."""


@dataclass(frozen=True)
class KohyaSubset:
    image_dir: Path
    num_repeats: int = 1
    class_tokens: str | None = None
    caption_extension: str = ".caption"
    keep_tokens: int = 0
    shuffle_caption: bool = False
    caption_separator: str = ","
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    alpha_mask: bool = False
    is_reg: bool = False


@dataclass(frozen=True)
class KohyaDataset:
    resolution: tuple[int, int] | None  # (height, width)
    batch_size: int | None
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    subsets: list[KohyaSubset] = field(default_factory=list)


def _check_keys(table: dict, allowed: set[str], where: str, problems: list[str]) -> None:
    for key in table:
        if key in _REFUSED and key in allowed:
            problems.append(f"{where}.{key}: {_REFUSED[key]}")
        elif key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            problems.append(f"{where}.{key}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))


def _resolution(value: Any, where: str, problems: list[str]) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[1], value[0])  # kohya writes [width, height]
    problems.append(f"{where}.resolution: expected a number or [width, height], got {value!r}")
    return None


def read_kohya_dataset_config(path: str | Path) -> list[KohyaDataset]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KohyaDatasetError(f"{path}: dataset config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise KohyaDatasetError(f"{path}: not valid TOML: {err}") from None
    problems: list[str] = []
    _check_keys(data, {"general", "datasets"}, "", problems)
    general = data.get("general", {})
    _check_keys(general, SUBSET_KEYS | DATASET_KEYS - {"subsets"}, "general", problems)
    datasets = []
    if not data.get("datasets"):
        problems.append("datasets: no [[datasets]] table; add one with at least one [[datasets.subsets]]")
    for i, ds in enumerate(data.get("datasets", [])):
        where = f"datasets[{i}]"
        _check_keys(ds, SUBSET_KEYS | DATASET_KEYS, where, problems)
        merged = {**general, **{k: v for k, v in ds.items() if k != "subsets"}}
        subsets = []
        if not ds.get("subsets"):
            problems.append(f"{where}: no [[datasets.subsets]] with an image_dir")
        for j, sub in enumerate(ds.get("subsets", [])):
            sub_where = f"{where}.subsets[{j}]"
            _check_keys(sub, SUBSET_KEYS, sub_where, problems)
            options = {k: v for k, v in {**merged, **sub}.items() if k in SUBSET_KEYS and k not in _REFUSED}
            options.pop("cache_info", None)
            if "image_dir" not in options:
                problems.append(f"{sub_where}.image_dir: missing; every subset needs its image folder")
                continue
            image_dir = Path(options.pop("image_dir")).expanduser()
            if not image_dir.is_absolute() and not image_dir.is_dir():
                image_dir = path.parent / image_dir  # kohya reads it from the working folder; else beside the file
            try:
                subsets.append(KohyaSubset(image_dir=image_dir, **options))
            except TypeError as err:
                problems.append(f"{sub_where}: {err}")
        datasets.append(KohyaDataset(
            resolution=_resolution(merged.get("resolution"), where, problems),
            batch_size=merged.get("batch_size"),
            enable_bucket=bool(merged.get("enable_bucket", False)),
            min_bucket_reso=int(merged.get("min_bucket_reso", 256)),
            max_bucket_reso=int(merged.get("max_bucket_reso", 1024)),
            bucket_reso_steps=int(merged.get("bucket_reso_steps", 64)),
            bucket_no_upscale=bool(merged.get("bucket_no_upscale", False)),
            subsets=subsets,
        ))
    for ds_i, ds in enumerate(datasets):
        for key in ("resolution", "batch_size", "enable_bucket", "bucket_reso_steps"):
            if getattr(ds, key) != getattr(datasets[0], key):
                problems.append(
                    f"datasets[{ds_i}].{key}: differs from datasets[0]; tiforge trains all datasets of a file in one "
                    "loop, so give them the same resolution, batch size and bucketing (or merge them as subsets)"
                )
    if problems:
        raise KohyaDatasetError(f"{path}: the dataset config has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return datasets
