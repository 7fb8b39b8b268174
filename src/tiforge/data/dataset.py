"""Training data: records (from `data_sources`) turned into batches of pixels or cached latents,
token ids, masks and the crop facts SDXL conditions on.

Every random choice about an item (template, caption shuffle and dropout, crop, flip, colour) comes
from a generator seeded by (run seed, epoch, item index) alone, and the order of an epoch from (run
seed, epoch). So results do not depend on the number of workers, and a resumed run can start in the
middle of an epoch without replaying it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from tiforge.data.buckets import bucket_sizes, choose_bucket
from tiforge.config.schema import TextualInversionSDDataLoaderConfig
from tiforge.data.sources import DatasetError, HFImage, Record, default_options, find_records  # noqa: F401  (re-exported)
from tiforge.data.templates import PRESETS, read_a1111_templates
from tiforge.model.text_conditioning import tokenize
from tiforge.model.placeholders import Placeholder

log = logging.getLogger(__name__)


def check_captions_hold_placeholder(records: list[Record], placeholder: str, uses_templates: bool) -> list[str]:
    """Names the caption files that never mention the placeholder (they teach it nothing).

    Returns the offending file names (a warning); raises when no caption mentions it at all.
    """
    if uses_templates:
        return []
    without = [r.name for r in records if placeholder not in (r.caption or "")]
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


# --------------------------------------------------------------------------------------- captions


class Captioner:
    """Builds the caption a record is trained with, then expands the placeholder into its vectors."""

    def __init__(self, dl: TextualInversionSDDataLoaderConfig, placeholder: Placeholder):
        if dl.caption_templates_file:
            self.templates = read_a1111_templates(dl.caption_templates_file)
        else:
            self.templates = PRESETS[dl.caption_preset] if dl.caption_preset else dl.caption_templates
        self.keep_original = dl.keep_original_captions
        self.options = default_options(dl)  # for callers without a record; records carry their own
        self.placeholder = placeholder

    def __call__(self, original: str | None, rng: torch.Generator | None = None, record: Record | None = None) -> str:
        options = record.options if record is not None else self.options
        caption = _tags(original, options, rng) if original else ""
        if options.caption_dropout_rate and _chance(rng) < options.caption_dropout_rate:
            caption = ""
        if self.templates:
            template = self.templates[int(torch.randint(len(self.templates), (), generator=rng).item())]
            if "[name]" in template or "[filewords]" in template:  # an A1111 template line
                words = original if original is not None else _file_words(record)
                return self.placeholder.expand(
                    template.replace("[name]", self.placeholder.token).replace("[filewords]", words or "")
                )
            prefix = template.format(self.placeholder.token)
            caption = f"{prefix} {caption}".strip() if self.keep_original else prefix
        caption = " ".join(p for p in (options.caption_prefix, caption, options.caption_suffix) if p)
        return self.placeholder.expand(caption)


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


# ----------------------------------------------------------------------------------------- images


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the top 8 bits, not a clip
        arr = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray((arr >> (8 if arr.max() > 255 else 0)).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        im = Image.fromarray(np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")  # transparent parts become white
    return im.convert("RGB")


def open_image(source: Path | HFImage) -> Image.Image:
    """The picture as stored, fully decoded, EXIF orientation applied (phone photos store rotation there)."""
    if isinstance(source, HFImage):
        value = source.dataset[source.row][source.column]
        im = value if isinstance(value, Image.Image) else Image.open(value)
    else:
        im = Image.open(source)
    im.load()  # decode now: a truncated file fails here, not halfway through training
    return ImageOps.exif_transpose(im)


def load_image(source: Path | HFImage) -> Image.Image:
    return _to_rgb(open_image(source))


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def load_mask(record: Record, picture: Image.Image | None = None) -> Image.Image | None:
    """White trains, black is ignored: the record's mask file, else the picture's own alpha channel
    (kohya's alpha_mask; any transparent picture when masks are on), else None (all of it trains).
    `picture` is the record's image as opened, to spare a second decode."""
    if record.mask is not None:
        im = open_image(record.mask)
        return im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("L")
    picture = picture if picture is not None else open_image(record.image)
    if has_alpha(picture):
        return picture.convert("RGBA").getchannel("A")
    return None


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    original_size: tuple[int, int]  # (height, width) before resizing; SDXL conditions on these


def resize_and_crop(
    image: Image.Image, size: tuple[int, int], center: bool, flip: bool, rng: torch.Generator | None = None,
    mask: Image.Image | None = None,
) -> tuple[torch.Tensor, Crop] | tuple[torch.Tensor, Crop, torch.Tensor]:
    """Scale to cover `size`, crop, maybe mirror; a mask goes through exactly the same steps."""
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
    box = (left, top, left + width, top + height)
    pixels = torch.from_numpy(np.asarray(image.crop(box), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    if flip:
        pixels = pixels.flip(-1)
    crop = Crop(top, left, original)
    if mask is None:
        return pixels, crop
    mask = mask.resize((new_w, new_h), Image.Resampling.BILINEAR).crop(box)
    weights = torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).float().unsqueeze(0) / 255.0
    return pixels, crop, weights.flip(-1) if flip else weights


def color_augment(pixels: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """kohya's color_aug in spirit: a small random hue rotation, plus slight saturation/brightness."""
    angle = (float(torch.rand((), generator=rng)) - 0.5) * 0.35  # about +-10 degrees
    c, s = np.cos(angle), np.sin(angle)
    k = 1 / 3 ** 0.5
    # rotation about the grey axis of RGB space (Rodrigues)
    rot = torch.tensor([
        [c + (1 - c) / 3, (1 - c) / 3 - k * s, (1 - c) / 3 + k * s],
        [(1 - c) / 3 + k * s, c + (1 - c) / 3, (1 - c) / 3 - k * s],
        [(1 - c) / 3 - k * s, (1 - c) / 3 + k * s, c + (1 - c) / 3],
    ], dtype=pixels.dtype)
    gain = 1 + (float(torch.rand((), generator=rng)) - 0.5) * 0.1
    return (torch.einsum("ij,jhw->ihw", rot, pixels) * gain).clamp(-1, 1)


def item_rng(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] ^ (state[1] >> 1)) & (2**63 - 1))


# ---------------------------------------------------------------------------------------- dataset


class TextualInversionDataset(Dataset):
    """Items are {"pixel_values" or "latent_params", "input_ids" [encoders, 77], "caption",
    "original_size", "crop_top_left", "target_size", and "mask" with masks on}, looked up by
    (epoch, index) keys from `EpochBatchSampler`. An index counts repeats (kohya's num_repeats):
    record r appears `r.repeats` times per epoch, each time with its own augmentation.

    With `latent_params` set (cached VAE outputs), no image is decoded at all.
    """

    def __init__(self, records: list[Record], dl: TextualInversionSDDataLoaderConfig, captioner: Captioner, tokenizers,
                 seed: int = 0, sizes: dict[int, tuple[int, int]] | None = None, use_masks: bool = False):
        self.records = records
        self.dl = dl
        self.captioner = captioner
        self.tokenizers = tokenizers if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        self.seed = seed
        self.use_masks = use_masks
        self.record_of = [r for r, rec in enumerate(records) for _ in range(rec.repeats)]
        self.targets = self._targets(sizes or {})
        self.latent_params: list[torch.Tensor] | None = None
        self.latent_crops: list[Crop] | None = None
        self.latent_masks: list[torch.Tensor | None] | None = None
        self._images: dict[int, Image.Image] = {}
        if getattr(dl.dataset, "keep_in_memory", False):
            self._images = {i: open_image(r.image) for i, r in enumerate(records)}

    def _targets(self, sizes: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
        """The training size of each record: the fixed resolution, or its aspect-ratio bucket."""
        cfg = self.dl.aspect_ratio_buckets
        if cfg is None:
            return [self.dl.height_width] * len(self.records)
        buckets = bucket_sizes(cfg)
        out = []
        for r, record in enumerate(self.records):
            size = sizes.get(r)
            if size is None:
                with Image.open(record.image) if isinstance(record.image, Path) else open_image(record.image) as im:
                    size = ImageOps.exif_transpose(im).size[::-1]
            out.append(choose_bucket(size, buckets, cfg))
        return out

    def __len__(self) -> int:
        return len(self.record_of)

    def bucket_of(self, index: int) -> tuple[int, int]:
        return self.targets[self.record_of[index]]

    def image_tensors(self, record_index: int, rng: torch.Generator | None = None):
        """(pixels, crop, mask or None) of one record, augmented by `rng` (None: deterministic)."""
        record = self.records[record_index]
        raw = self._images[record_index] if record_index in self._images else open_image(record.image)
        image = _to_rgb(raw)
        mask = load_mask(record, raw) if self.use_masks else None
        if mask is not None and mask.size != image.size:
            raise DatasetError(f"{record.mask or record.name}: mask is {mask.size[0]}x{mask.size[1]} but the image "
                               f"{record.name} is {image.width}x{image.height}; a mask must match its image")
        flip = rng is not None and record.options.flip and bool(torch.rand((), generator=rng) < 0.5)
        center = rng is None or not record.options.random_crop
        out = resize_and_crop(image, self.targets[record_index], center=center, flip=flip, rng=rng, mask=mask)
        pixels, crop = out[0], out[1]
        if rng is not None and record.options.color_aug:
            pixels = color_augment(pixels, rng)
        return pixels, crop, out[2] if mask is not None else None

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        r = self.record_of[index]
        record = self.records[r]
        rng = item_rng(self.seed, epoch, index)
        caption = self.captioner(record.caption, rng, record)
        item = {"caption": caption, "input_ids": tokenize(self.tokenizers, [caption])[0]}
        if self.latent_params is not None:
            item["latent_params"], crop = self.latent_params[r], self.latent_crops[r]
            mask = self.latent_masks[r] if self.use_masks else None
        else:
            r, (item["pixel_values"], crop, mask) = self._readable(r, rng)
        if self.use_masks:
            item["mask"] = mask if mask is not None else torch.ones(1, *self.targets[r])
        item["crop_top_left"] = torch.tensor([crop.top, crop.left])
        item["original_size"] = torch.tensor(crop.original_size)
        item["target_size"] = torch.tensor(self.targets[r])
        return item


    def _readable(self, r: int, rng):
        """A file that breaks after the start-up check (deleted, rewritten) must not end the run:
        say so and train this slot on the next record of the same size instead."""
        for step in range(len(self.records)):
            candidate = (r + step) % len(self.records)
            if self.targets[candidate] != self.targets[r]:
                continue
            try:
                return candidate, self.image_tensors(candidate, rng)
            except (OSError, ValueError) as err:
                log.warning("%s: unreadable during training (%s); using another picture in its place",
                            self.records[candidate].name, err)
        raise DatasetError(f"no readable picture of size {self.targets[r]} is left; the training data changed "
                           "during the run")


class EpochSampler(Sampler):
    """Yields (epoch, index) keys in an order that depends only on (seed, epoch).

    `begin(epoch, skip)` picks the epoch and how many of its items were already used (resume).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.skip = 1, 0

    def begin(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self) -> list[int]:
        if self.shuffle:
            return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()
        return list(range(self.size))

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.order()[self.skip :]])

    def __len__(self) -> int:
        return self.size - self.skip


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys; with buckets, each batch comes from one bucket and the order of
    batches is shuffled too. `begin(epoch, skip)` skips `skip` whole batches (resume)."""

    def __init__(self, dataset: TextualInversionDataset, batch_size: int, seed: int):
        self.items = EpochSampler(len(dataset), seed)
        self.batch_size, self.seed = batch_size, seed
        self.buckets = [dataset.bucket_of(i) for i in range(len(dataset))] \
            if dataset.dl.aspect_ratio_buckets is not None else None
        self.skip = 0

    def begin(self, epoch: int, skip: int = 0) -> None:
        self.items.begin(epoch)
        self.skip = skip

    def batches(self) -> list[list[tuple[int, int]]]:
        order = self.items.order()
        epoch = self.items.epoch
        if self.buckets is None:
            groups = [order]
        else:
            by_bucket: dict[tuple[int, int], list[int]] = {}
            for i in order:
                by_bucket.setdefault(self.buckets[i], []).append(i)
            groups = list(by_bucket.values())
        batches = [[(epoch, i) for i in g[s : s + self.batch_size]] for g in groups for s in range(0, len(g), self.batch_size)]
        if self.buckets is not None:
            shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(self.seed * 104729 + epoch))
            batches = [batches[i] for i in shuffle.tolist()]
        return batches

    def batches_per_epoch(self) -> int:
        if self.buckets is None:
            return -(-len(self.items.order()) // self.batch_size)
        counts: dict[tuple[int, int], int] = {}
        for b in self.buckets:
            counts[b] = counts.get(b, 0) + 1
        return sum(-(-n // self.batch_size) for n in counts.values())

    def __iter__(self):
        return iter(self.batches()[self.skip :])

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip


def collate(items: list[dict]) -> dict:
    batch = {"caption": [it["caption"] for it in items]}
    for key in items[0]:
        if key != "caption":
            batch[key] = torch.stack([it[key] for it in items])
    return batch


def make_dataloader(dataset: TextualInversionDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(dataset, batch_size, dataset.seed),
        collate_fn=collate,
        num_workers=num_workers,
        # workers are cheap to keep and the sampler, not the workers, carries the epoch
        persistent_workers=num_workers > 0,
    )
