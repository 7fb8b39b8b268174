"""invoke-training's own textual-inversion sample configs run to the end here.

Each YAML below is the published file (invoke-ai/invoke-training, src/invoke_training/sample_configs/,
as of 2025-08) field for field. The test swaps in only what a CPU test must: the model (and VAE) for a
tiny local one, the data folder, fewer steps, and a picture size the tiny model trains in seconds.
Everything else - weight_dtype bfloat16 with mixed_precision unset, gradient checkpointing,
validation, checkpoints, aspect-ratio buckets, masks - runs as published.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import load_embedding
from tiforge.training.recipe import train

from conftest import make_images

SD_GNOME = """\
# Training mode: Textual Inversion
# Base model:    SD v1
# GPU:           1 x 24GB

type: SD_TEXTUAL_INVERSION
seed: 1
base_output_dir: output/sd_ti_bruce_the_gnome

optimizer:
  optimizer_type: AdamW
  learning_rate: 4e-3

lr_warmup_steps: 200
lr_scheduler: cosine

data_loader:
  type: TEXTUAL_INVERSION_SD_DATA_LOADER
  dataset:
    type: IMAGE_DIR_DATASET
    dataset_dir: "sample_data/bruce_the_gnome"
    keep_in_memory: True
  caption_preset: object
  resolution: 512
  center_crop: True
  random_flip: False
  shuffle_caption_delimiter: null
  aspect_ratio_buckets:
    target_resolution: 512
    start_dim: 256
    end_dim: 768
    divisible_by: 64
  dataloader_num_workers: 4

# General
model: runwayml/stable-diffusion-v1-5
num_vectors: 4
placeholder_token: "bruce_the_gnome"
initializer_token: "gnome"
cache_vae_outputs: False
gradient_accumulation_steps: 1
weight_dtype: bfloat16
gradient_checkpointing: True

max_train_steps: 2000
save_every_n_steps: 200
validate_every_n_steps: 200

max_checkpoints: 20
validation_prompts:
  - A photo of bruce_the_gnome at the beach
  - A photo of bruce_the_gnome reading a book
train_batch_size: 1
num_validation_images_per_prompt: 3
"""

SDXL_GNOME = """\
# Training mode: Textual Inversion
# Base model:    SDXL
# GPU:           1 x 24GB

type: SDXL_TEXTUAL_INVERSION
seed: 1
base_output_dir: output/bruce/sdxl_ti

optimizer:
  optimizer_type: AdamW
  learning_rate: 2e-3

lr_warmup_steps: 200
lr_scheduler: cosine

data_loader:
  type: TEXTUAL_INVERSION_SD_DATA_LOADER
  dataset:
    type: IMAGE_DIR_DATASET
    dataset_dir: "sample_data/bruce_the_gnome"
    keep_in_memory: True
  caption_preset: object
  resolution: 1024
  center_crop: True
  random_flip: False
  shuffle_caption_delimiter: null
  dataloader_num_workers: 4

# General
model: stabilityai/stable-diffusion-xl-base-1.0
vae_model: madebyollin/sdxl-vae-fp16-fix
num_vectors: 4
placeholder_token: "bruce_the_gnome"
initializer_token: "gnome"
cache_vae_outputs: False
gradient_accumulation_steps: 1
weight_dtype: bfloat16
gradient_checkpointing: True

max_train_steps: 2000
save_every_n_steps: 200
validate_every_n_steps: 200

max_checkpoints: 20
validation_prompts:
  - A photo of bruce_the_gnome at the beach
  - A photo of bruce_the_gnome reading a book
train_batch_size: 1
num_validation_images_per_prompt: 3
"""

SDXL_MASKS_GNOME = """\
# Training mode: Textual Inversion with Masks
# Base model:    SDXL
# GPU:           1 x 24GB

type: SDXL_TEXTUAL_INVERSION
seed: 1
base_output_dir: output/bruce/sdxl_ti_masks

optimizer:
  optimizer_type: AdamW
  learning_rate: 5e-4

lr_scheduler: constant_with_warmup
lr_warmup_steps: 50

data_loader:
  type: TEXTUAL_INVERSION_SD_DATA_LOADER
  dataset:
    type: IMAGE_CAPTION_JSONL_DATASET
    jsonl_path: sample_data/bruce_the_gnome/data_masks.jsonl
    keep_in_memory: True
  caption_preset: object
  resolution: 1024
  center_crop: True
  random_flip: False
  shuffle_caption_delimiter: null

# General
model: stabilityai/stable-diffusion-xl-base-1.0
num_vectors: 16
placeholder_token: "bruce_the_gnome"
initializer_token: "gnome"
cache_vae_outputs: False
gradient_accumulation_steps: 1
weight_dtype: bfloat16
gradient_checkpointing: True

max_train_steps: 500
save_every_n_steps: 50
validate_every_n_steps: 50

use_masks: True

max_checkpoints: 10
validation_prompts:
  - A photo of bruce_the_gnome at the beach with a pina colada in its hand.
  - A photo of bruce_the_gnome reading a book in a cozy library.
train_batch_size: 4
num_validation_images_per_prompt: 3
"""

# What a CPU test must change; nothing else differs from the published file.
SHORTER = {"max_train_steps": 2, "save_every_n_steps": 1, "validate_every_n_steps": 1,
           "num_validation_inference_steps": 2}
SMALL = {"resolution": 32, "aspect_ratio_buckets": {"target_resolution": 32, "start_dim": 16, "end_dim": 48,
                                                    "divisible_by": 8}}


def _gnome_data(folder):
    """Four pictures, each with a mask (left half kept) and a caption line in a .jsonl, as the sample's data."""
    make_images(folder, n=4, size=40)
    lines = []
    for image in sorted(folder.glob("*.png")):
        mask = Image.new("L", Image.open(image).size, 0)
        mask.paste(255, (0, 0, mask.width // 2, mask.height))
        mask.save(folder / f"{image.stem}_mask.jpg")
        lines.append(json.dumps({"image": image.name, "text": "a stuffed gnome", "mask": f"{image.stem}_mask.jpg"}))
    (folder / "data_masks.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _local(published: str, model, data, out) -> dict:
    cfg = yaml.safe_load(published)
    cfg["model"] = str(model)
    if "vae_model" in cfg:
        cfg["vae_model"] = str(model)  # the tiny model's own vae/ folder stands in for the fp16-fix VAE
    dataset = cfg["data_loader"]["dataset"]
    if "dataset_dir" in dataset:
        dataset["dataset_dir"] = str(data)
    else:
        dataset["jsonl_path"] = str(data / "data_masks.jsonl")
    cfg["base_output_dir"] = str(out)
    cfg.update(SHORTER)
    loader = cfg["data_loader"]
    loader["resolution"] = SMALL["resolution"]
    if "aspect_ratio_buckets" in loader:
        loader["aspect_ratio_buckets"] = SMALL["aspect_ratio_buckets"]
    loader.pop("dataloader_num_workers", None)  # automatic: 4 worker processes would only slow a 2-step run
    return cfg


@pytest.mark.parametrize("name,published,family", [
    ("sd_textual_inversion_gnome_1x8gb", SD_GNOME, "sd1"),
    ("sdxl_textual_inversion_gnome_1x24gb", SDXL_GNOME, "sdxl"),
    ("sdxl_textual_inversion_masks_gnome_1x24gb", SDXL_MASKS_GNOME, "sdxl"),
])
def test_invoke_training_sample_config_runs_to_the_end(name, published, family, request, tmp_path):
    model = request.getfixturevalue(f"tiny_{family}")
    cfg = _local(published, model, _gnome_data(tmp_path / "bruce_the_gnome"), tmp_path / "out")
    changed = {k for k, v in cfg.items() if yaml.safe_load(published).get(k) != v}
    assert changed <= {"model", "vae_model", "base_output_dir", "data_loader", *SHORTER}
    assert cfg["weight_dtype"] == "bfloat16" and "mixed_precision" not in cfg  # what used to crash validation

    result = train(config_from_dict(cfg), progress=False)

    assert result.global_step == 2
    assert [d.name for d in result.validation_dirs] == ["step_00000001", "final"]
    assert len(list(result.validation_dirs[-1].glob("prompt*_image*.png"))) == 2 * 3
    vectors = load_embedding(result.embedding_path).vectors
    widths = {"sd1": {"": 32}, "sdxl": {"clip_l": 32, "clip_g": 32}}[family]
    assert len(vectors) == len(widths)
    for v in vectors.values():
        assert v.shape[0] == cfg["num_vectors"] and v.dtype == torch.float32 and torch.isfinite(v).all()
