"""`tiforge demo`: a complete, offline training run on an embedded default.

The model is a tiny Stable-Diffusion-architecture pipeline (real diffusers/transformers classes,
random weights, the real CLIP tokenizer) that tiforge builds locally, and the data are six small
bundled pictures. It shows the whole flow - data, training, checkpoints, validation images, the
embedding file - in about a minute on a laptop CPU. Random weights do not understand prompts, so
the pictures it draws are noise-like: the demo proves the machinery, not image quality.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from .clip_tokenizer import cache_dir
from .config import config_from_dict
from .tiny import save_tiny_pipeline
from .train import TrainResult, train

DEMO_MODEL_VERSION = 1


def demo_model_dir() -> Path:
    """The tiny SD1-architecture model, built once and kept in the tiforge cache."""
    target = cache_dir() / f"demo-model-sd1-v{DEMO_MODEL_VERSION}"
    if not (target / "model_index.json").is_file():
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_tiny_pipeline(tmp, "sd1", seed=0)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def demo_images_dir() -> Path:
    return Path(str(resources.files("tiforge") / "assets" / "demo_images"))


def demo_config(output_dir: str, steps: int = 60) -> dict:
    return {
        "type": "SD_TEXTUAL_INVERSION",
        "seed": 42,
        "base_output_dir": output_dir,
        "report_to": "tensorboard",
        "model": str(demo_model_dir()),
        "placeholder_token": "<demo-toy>",
        "initializer_token": "toy",
        "num_vectors": 2,
        "max_train_steps": steps,
        "save_every_n_steps": max(1, steps // 3),
        "max_checkpoints": 2,
        "validate_every_n_steps": max(1, steps // 2),
        "validation_prompts": ["a photo of a <demo-toy>", "a <demo-toy> on a table"],
        "num_validation_images_per_prompt": 2,
        "num_validation_inference_steps": 10,
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 5e-3},
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 5,
        "train_batch_size": 2,
        "cache_vae_outputs": True,
        "data_loader": {
            "type": "TEXTUAL_INVERSION_SD_DATA_LOADER",
            "dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(demo_images_dir())},
            "caption_preset": "object",
            "resolution": 64,
        },
    }


def run_demo(output_dir: str = "tiforge-demo", steps: int = 60, progress: bool = True) -> TrainResult:
    print(f"tiforge demo: tiny SD-architecture model at {demo_model_dir()} (random weights, built locally)")
    print(f"              training data: {demo_images_dir()} (6 bundled pictures)")
    config = config_from_dict(demo_config(output_dir, steps), "demo config")
    result = train(config, progress=progress)
    grid = result.validation_dirs[-1] / "grid.png" if result.validation_dirs else None
    print()
    print(f"Done: {result.global_step} steps, final loss {result.final_loss:.4f}")
    print(f"  embedding:         {result.embedding_path}")
    print(f"  validation images: {', '.join(str(d) for d in result.validation_dirs)}")
    if grid:
        print(f"  latest grid:       {grid}")
    print(f"  checkpoints:       {result.run_dir / 'checkpoints'}")
    print(f"  config used:       {result.run_dir / 'config.yaml'}  (rerun: tiforge train {result.run_dir / 'config.yaml'})")
    print(f"  logs:              {result.run_dir / 'logs'} (tensorboard --logdir {result.run_dir / 'logs'})")
    print()
    print("The demo model has random weights, so its pictures are noise: it proves the machinery.")
    print("With a real model:  tiforge config --example > my.yaml   # edit model, data, placeholder")
    print("                    tiforge train my.yaml")
    return result
