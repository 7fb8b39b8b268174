"""Training data: records (from `data_sources`) turned into batches of pixels or cached latents,
token ids, masks and the crop facts SDXL conditions on.

Every random choice about an item (template, caption shuffle and dropout, crop, flip, colour) comes
from a generator seeded by (run seed, epoch, item index) alone, and the order of an epoch from (run
seed, epoch). So results do not depend on the number of workers, and a resumed run can start in the
middle of an epoch without replaying it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.data.buckets import bucket_sizes, choose_bucket
from tiforge.data.captions import Captioner
from tiforge.data.images import Crop, color_augment, load_mask, open_image, resize_and_crop, to_rgb
from tiforge.data.sources import DatasetError, Record
from tiforge.model.text_conditioning import tokenize

log = logging.getLogger(__name__)


def item_rng(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] ^ (state[1] >> 1)) & (2**63 - 1))


# ---------------------------------------------------------------------------------------- dataset


class TextualInversionDataset(Dataset):
    """Items are {"pixel_values" or "latent_params", "input_ids" [encoders, 77 x windows], "caption",
    "original_size", "crop_top_left", "target_size", and "mask" with masks on}, looked up by
    (epoch, index) keys from `EpochBatchSampler`. An index counts repeats (kohya's num_repeats):
    record r appears `r.repeats` times per epoch, each time with its own augmentation.

    With `latent_params` set (cached VAE outputs), no image is decoded at all.
    """

    def __init__(self, records: list[Record], dl: TextualInversionSDDataLoaderConfig, captioner: Captioner, tokenizers,
                 seed: int = 0, sizes: dict[int, tuple[int, int]] | None = None, use_masks: bool = False,
                 max_token_length: int | None = None):
        self.records = records
        self.dl = dl
        self.captioner = captioner
        self.tokenizers = tokenizers if isinstance(tokenizers, (list, tuple)) else [tokenizers]
        self.seed = seed
        self.use_masks = use_masks
        self.max_token_length = max_token_length  # kohya's long captions: 77-token windows (model.long_prompts)
        self.record_of = [r for r, rec in enumerate(records) for _ in range(rec.repeats)]
        self.has_reg = any(rec.is_reg for rec in records)
        self.targets = self._targets(sizes or {})
        # cached VAE outputs per record and variant: [0] as is, [1] mirrored (records that flip at random)
        self.latent_params: list[list[torch.Tensor]] | None = None
        self.latent_crops: list[list[Crop]] | None = None
        self.latent_masks: list[list[torch.Tensor | None]] | None = None
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

    def draw_flip(self, record_index: int, rng: torch.Generator | None) -> bool:
        """The item's flip decision: one draw from its generator, made only where flipping is on, so a
        cached run (which picks a stored variant) uses the generator exactly as an uncached one does."""
        return rng is not None and self.records[record_index].options.flip and bool(torch.rand((), generator=rng) < 0.5)

    def image_tensors(self, record_index: int, rng: torch.Generator | None = None, flip: bool | None = None):
        """(pixels, crop, mask or None) of one record, augmented by `rng` (None: deterministic); `flip`
        forces the mirror image (latent caching encodes both)."""
        record = self.records[record_index]
        raw = self._images[record_index] if record_index in self._images else open_image(record.image)
        image = to_rgb(raw)
        mask = load_mask(record, raw) if self.use_masks else None
        if mask is not None and mask.size != image.size:
            raise DatasetError(f"{record.mask or record.name}: mask is {mask.size[0]}x{mask.size[1]} but the image "
                               f"{record.name} is {image.width}x{image.height}; a mask must match its image")
        flip = self.draw_flip(record_index, rng) if flip is None else flip
        center = rng is None or not record.options.random_crop
        out = resize_and_crop(image, self.targets[record_index], center=center, flip=flip, rng=rng, mask=mask,
                              squash=self.dl.squash)
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
        item = {"caption": caption, "input_ids": tokenize(self.tokenizers, [caption], self.max_token_length)[0]}
        if self.has_reg:  # regularization pictures train at prior_loss_weight (training.regularization)
            item["is_reg"] = torch.tensor(record.is_reg)
        if self.latent_params is not None:
            variant = int(self.draw_flip(r, rng))  # 1: the mirror image, encoded beside the picture as is
            item["latent_params"], crop = self.latent_params[r][variant], self.latent_crops[r][variant]
            mask = self.latent_masks[r][variant] if self.use_masks else None
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


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the training process, which saves and stops; `timeout`,
    systemd and a terminal's Ctrl-C signal the whole process group, and a worker killed by it would
    otherwise crash the run before it could save."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_dataloader(dataset: TextualInversionDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(dataset, batch_size, dataset.seed),
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        # workers are cheap to keep and the sampler, not the workers, carries the epoch
        persistent_workers=num_workers > 0,
    )


def auto_num_workers(config, cached: bool) -> int:
    """Worker processes for the data loader: the config's number, or an automatic choice. `cached`:
    whether latents are cached (decided from the data: cache_vae_outputs may be null)."""
    import os
    import threading

    if config.data_loader.dataloader_num_workers is not None:
        return config.data_loader.dataloader_num_workers
    if cached:
        return 0  # cached latents: an item is a tensor lookup and a tokenizer call
    if threading.current_thread() is not threading.main_thread():
        return 0  # a front end trains in a thread: forking worker processes from it is not safe
    return max(0, min(4, (os.cpu_count() or 1) - 1))
