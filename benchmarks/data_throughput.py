"""Data-pipeline throughput: items per second that the training loop can be fed, from a folder of
generated JPEG photos-sized pictures with captions, uncached (decode, resize, crop, tokenize) with 0
and 2 worker processes, and with cached latents (no image decoding at all).

    python benchmarks/data_throughput.py                 # 300 pictures of 768x512, 512 px training
    python benchmarks/data_throughput.py --images 100    # quicker

The GPU never waits when items/s exceeds what the model consumes: SD 1.5 at 512 px trains a few
items per second on a fast GPU (several hundred ms per batch-4 step).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))


class StandInVAE(torch.nn.Module):
    """Shapes like a VAE's encode (8 channels of mean and log-variance at 1/8 size), one strided conv."""

    config = {"name": "stand-in"}

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    @property
    def dtype(self):
        return self.conv.weight.dtype

    def encode(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=SimpleNamespace(parameters=self.conv(x)))


def make_pictures(folder: Path, n: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth noise compresses like a photo, not like a flat colour
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(folder / f"p{i:04d}.jpg", quality=90)
        (folder / f"p{i:04d}.txt").write_text(f"a photo of <thing>, picture {i}, outdoors, daylight")


def epoch_rate(dataset, batch_size: int, workers: int, epochs: int = 2) -> float:
    from tiforge.data.dataset import make_dataloader

    loader = make_dataloader(dataset, batch_size, workers)
    items, start = 0, None
    for epoch in range(1, epochs + 2):
        loader.batch_sampler.begin(epoch)
        if epoch == 2:  # the first epoch starts the workers: not counted
            items, start = 0, time.perf_counter()
        for batch in loader:
            items += len(batch["caption"])
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
    from tiforge.data.dataset import TextualInversionDataset
    from tiforge.data.captions import Captioner
    from tiforge.data.sources import find_records
    from tiforge.data.checks import scan_records
    from tiforge.data.latent_cache import cache_vae_outputs
    from tiforge.model.placeholders import add_placeholder

    root = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    make_pictures(root / "pictures", args.images, (768, 512))
    print(f"{args.images} pictures of 768x512 written in {time.perf_counter() - t:.1f} s")
    dl = TextualInversionSDDataLoaderConfig(
        dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(root / "pictures")}, resolution=args.resolution)
    tokenizer = load_clip_tokenizer()
    placeholder = add_placeholder(tokenizer, "<thing>", 2)
    records = find_records(dl)
    t = time.perf_counter()
    scan = scan_records(records, dl.height_width, False)
    check_s = time.perf_counter() - t
    dataset = TextualInversionDataset(scan.records, dl, Captioner(dl, placeholder), [tokenizer], sizes=scan.sizes)

    rows = [("start-up check (decode every file once)", args.images / check_s)]
    for workers in (0, 2):
        rows.append((f"uncached, {workers} worker process(es)", epoch_rate(dataset, args.batch, workers)))
    # A real VAE's cost is paid once per picture, whatever the pipeline: a one-layer stand-in keeps
    # this benchmark about the data path.
    vae = StandInVAE()
    cache = root / "latents"
    t = time.perf_counter()
    cache_vae_outputs(dataset, vae, torch.device("cpu"), torch.float32, disk_dir=cache)
    first = time.perf_counter() - t
    t = time.perf_counter()
    stats = cache_vae_outputs(dataset, vae, torch.device("cpu"), torch.float32, disk_dir=cache)
    reload = time.perf_counter() - t
    assert stats["encoded"] == 0
    rows.append(("cached latents (memory), 0 workers", epoch_rate(dataset, args.batch, 0)))
    rows.append(("disk cache: first fill (stand-in VAE)", args.images / first))
    rows.append(("disk cache: reload on a second run", args.images / reload))

    base = rows[1][1]
    print(f"\n{'pipeline':<42} {'items/s':>9} {'vs uncached':>12}")
    for name, rate in rows:
        print(f"{name:<42} {rate:>9.1f} {rate / base:>11.2f}x")
    print(f"\n{args.images} JPEGs 768x512 -> {args.resolution} px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads; epochs after the first, medians not needed (whole epochs).")


if __name__ == "__main__":
    main()
