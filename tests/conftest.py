"""Shared fixtures: tiny SD1/SD2/SDXL pipelines and small image folders, all built locally."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    from tiforge.toy.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd1", "sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> Path:
    from tiforge.toy.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd2", "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from tiforge.toy.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl", "sdxl")


SDXL = {"type": "SDXL_TEXTUAL_INVERSION"}


def make_images(folder: Path, n: int = 4, size: int = 48, captions: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.new("RGB", (size + 8 * i, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(im).ellipse([8, 8, size - 8, size - 8], fill=(200, 40, 40))
        im.save(folder / f"img_{i}.png")
        if captions is not None:
            (folder / f"img_{i}.txt").write_text(captions[i % len(captions)])
    return folder


def write_kohya_dataset_toml(path: Path, image_dir: Path, class_tokens: str, num_repeats: int = 1) -> Path:
    """A kohya dataset .toml in the DreamBooth-method layout: 32 px, batch 1, no buckets, one subset."""
    path.write_text(f"""[general]
enable_bucket = false
[[datasets]]
resolution = 32
batch_size = 1
  [[datasets.subsets]]
  image_dir = '{image_dir}'
  class_tokens = '{class_tokens}'
  num_repeats = {num_repeats}
""")
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    return make_images(tmp_path / "images")


def base_config(model: Path, data: Path, out: Path, **overrides) -> dict:
    """A small, fast config; tests override what they exercise."""
    cfg = {
        "type": "SD_TEXTUAL_INVERSION",
        "seed": 3,
        "base_output_dir": str(out),
        "report_to": "none",
        "model": str(model),
        "placeholder_token": "<thing>",
        "initializer_token": "toy",
        "num_vectors": 2,
        "max_train_steps": 4,
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-2},
        "train_batch_size": 2,
        "data_loader": {
            "type": "TEXTUAL_INVERSION_SD_DATA_LOADER",
            "dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)},
            "caption_preset": "object",
            "resolution": 32,
            "dataloader_num_workers": 0,  # the automatic choice starts worker processes: slow for tiny runs
        },
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg
