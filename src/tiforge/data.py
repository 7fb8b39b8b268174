"""Training data: image folders with optional captions, turned into (pixels or cached latents,
token ids) batches.

Every random choice about an item (template, caption shuffle, crop, flip) comes from a generator
seeded by (run seed, epoch, item index) alone, and the order of an epoch from (run seed, epoch). So
results do not depend on the number of workers, and a resumed run can start in the middle of an
epoch without replaying it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import TextualInversionSDDataLoaderConfig
from .templates import PRESETS
from .text_conditioning import tokenize
from .tokens import Placeholder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DatasetError(ValueError):
    """Training data that cannot be used; the message names the folder or files at fault."""


@dataclass(frozen=True)
class Record:
    image: Path
    caption: str | None  # None for IMAGE_DIR_DATASET: the caption comes from a template


def find_records(dl: TextualInversionSDDataLoaderConfig) -> list[Record]:
    folder = Path(dl.dataset.dataset_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"data_loader.dataset.dataset_dir {folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"data_loader.dataset.dataset_dir {folder}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    if dl.dataset.type == "IMAGE_DIR_DATASET":
        return [Record(p, None) for p in images]
    ext = dl.dataset.caption_extension
    missing = [p.name for p in images if not p.with_suffix(ext).is_file()]
    if missing:
        raise DatasetError(
            f"{folder}: IMAGE_CAPTION_DIR_DATASET needs a same-name {ext} caption per image; missing for "
            f"{len(missing)} image(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    return [Record(p, p.with_suffix(ext).read_text(encoding="utf-8").strip()) for p in images]


def check_captions_hold_placeholder(records: list[Record], placeholder: str, uses_templates: bool) -> list[str]:
    """Names the caption files that never mention the placeholder (they teach it nothing).

    Returns the offending file names (a warning); raises when no caption mentions it at all.
    """
    if uses_templates:
        return []
    without = [r.image.name for r in records if placeholder not in (r.caption or "")]
    if len(without) == len(records):
        raise DatasetError(
            f"none of the {len(records)} captions contains the placeholder {placeholder!r}, so training would "
            f"teach it nothing (e.g. {without[0]}). Add {placeholder!r} to the captions, or set "
            "data_loader.caption_preset (object/style) with keep_original_captions: true"
        )
    if without:
        log.warning(
            "%d of %d captions do not contain the placeholder %r and will not train it: %s",
            len(without), len(records), placeholder, ", ".join(without[:10]),
        )
    return without


class Captioner:
    """Builds the caption a record is trained with, then expands the placeholder into its vectors."""

    def __init__(self, dl: TextualInversionSDDataLoaderConfig, placeholder: Placeholder):
        self.templates = PRESETS[dl.caption_preset] if dl.caption_preset else dl.caption_templates
        self.keep_original = dl.keep_original_captions
        self.delimiter = dl.shuffle_caption_delimiter
        self.placeholder = placeholder

    def __call__(self, original: str | None, rng: torch.Generator | None = None) -> str:
        caption = original or ""
        if self.delimiter and caption:
            parts = [p.strip() for p in caption.split(self.delimiter)]
            order = torch.randperm(len(parts), generator=rng).tolist()
            caption = f"{self.delimiter} ".join(parts[i] for i in order)
        if self.templates:
            template = self.templates[int(torch.randint(len(self.templates), (), generator=rng).item())]
            prefix = template.format(self.placeholder.token)
            caption = f"{prefix} {caption}".strip() if self.keep_original else prefix
        return self.placeholder.expand(caption)


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
        return im.convert("RGB")


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    original_size: tuple[int, int]  # (height, width) before resizing; SDXL conditions on these


def resize_and_crop(
    image: Image.Image, size: tuple[int, int], center: bool, flip: bool, rng: torch.Generator | None = None
) -> tuple[torch.Tensor, Crop]:
    height, width = size
    original = (image.height, image.width)
    scale = max(height / image.height, width / image.width)
    new_h, new_w = max(height, round(image.height * scale)), max(width, round(image.width * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        top = int(torch.randint(new_h - height + 1, (), generator=rng).item())
        left = int(torch.randint(new_w - width + 1, (), generator=rng).item())
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    if flip:
        pixels = pixels.flip(-1)
    return pixels, Crop(top, left, original)


def item_rng(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] ^ (state[1] >> 1)) & (2**63 - 1))


class TextualInversionDataset(Dataset):
    """Items are {"pixel_values" or "latent_params", "input_ids" [encoders, 77], "caption",
    "original_size", "crop_top_left"}, looked up by (epoch, index) keys from `EpochSampler`.

    With `latent_params` set (cached VAE outputs), no image is decoded at all.
    """

    def __init__(self, records: list[Record], dl: TextualInversionSDDataLoaderConfig, captioner: Captioner, tokenizers,
                 seed: int = 0):
        self.records = records
        self.dl = dl
        self.size = dl.height_width
        self.captioner = captioner
        self.tokenizers = tokenizers if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        self.seed = seed
        self.latent_params: list[torch.Tensor] | None = None
        self.latent_crops: list[Crop] | None = None
        self._images: dict[int, Image.Image] = {}
        if dl.dataset.keep_in_memory:
            self._images = {i: load_image(r.image) for i, r in enumerate(records)}

    def __len__(self) -> int:
        return len(self.records)

    def image_tensor(self, index: int, rng: torch.Generator | None = None) -> tuple[torch.Tensor, Crop]:
        image = self._images[index] if index in self._images else load_image(self.records[index].image)
        flip = self.dl.random_flip and bool(torch.rand((), generator=rng) < 0.5)
        return resize_and_crop(image, self.size, center=self.dl.center_crop, flip=flip, rng=rng)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = item_rng(self.seed, epoch, index)
        caption = self.captioner(self.records[index].caption, rng)
        item = {"caption": caption, "input_ids": tokenize(self.tokenizers, [caption])[0]}
        if self.latent_params is not None:
            item["latent_params"], crop = self.latent_params[index], self.latent_crops[index]
        else:
            item["pixel_values"], crop = self.image_tensor(index, rng)
        item["crop_top_left"] = torch.tensor([crop.top, crop.left])
        item["original_size"] = torch.tensor(crop.original_size)
        return item


class EpochSampler(Sampler):
    """Yields (epoch, index) keys in an order that depends only on (seed, epoch).

    `begin(epoch, skip)` picks the epoch and how many of its items were already used (resume).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.skip = 1, 0

    def begin(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        else:
            order = torch.arange(self.size)
        return iter([(self.epoch, int(i)) for i in order[self.skip :]])

    def __len__(self) -> int:
        return self.size - self.skip


def collate(items: list[dict]) -> dict:
    batch = {"caption": [it["caption"] for it in items]}
    for key in items[0]:
        if key != "caption":
            batch[key] = torch.stack([it[key] for it in items])
    return batch


def make_dataloader(dataset: TextualInversionDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), dataset.seed),
        collate_fn=collate,
        num_workers=num_workers,
        # workers are cheap to keep and the sampler, not the workers, carries the epoch
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


@torch.no_grad()
def cache_vae_outputs(dataset: TextualInversionDataset, vae, device, dtype, progress=None) -> None:
    """Encode every image once; store the latent distribution (mean and log-variance) so each
    step still samples fresh latents, exactly as without the cache."""
    params, crops = [], []
    indices = range(len(dataset))
    for index in progress(indices) if progress else indices:
        pixels, crop = dataset.image_tensor(index)  # deterministic: caching needs center crops and no flips
        dist = vae.encode(pixels.unsqueeze(0).to(device, dtype)).latent_dist
        params.append(dist.parameters[0].to("cpu", torch.float32))
        crops.append(crop)
    dataset.latent_params, dataset.latent_crops = params, crops
