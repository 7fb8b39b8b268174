"""Tiny Stable Diffusion pipelines built locally: the real diffusers/transformers classes with small
configs and random weights, plus the real CLIP tokenizer.

They exercise every code path of training (text encoder, UNet, VAE, scheduler, tokenizer ids) in
well under a second per step on a laptop CPU. Random weights barely listen to the prompt, so they
prove mechanics, not learning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from .clip_tokenizer import load_clip_tokenizer

Family = Literal["sd1", "sd2"]

# SD 1.x uses CLIP ViT-L (width 768, epsilon); SD 2.x uses OpenCLIP ViT-H (width 1024,
# v-prediction, "!" padding, linear projections). The tiny twins keep those differences at small
# sizes so that a family mix-up shows up as a width mismatch, as it does with real models.
_TEXT_WIDTH = {"sd1": 32, "sd2": 48}


def build_tiny_pipeline(family: Family = "sd1", seed: int = 0):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if family not in _TEXT_WIDTH:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(_TEXT_WIDTH)}")
    width = _TEXT_WIDTH[family]
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0 if sd2 else 49407,
            hidden_act="gelu" if sd2 else "quick_gelu",
            projection_dim=width,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction" if sd2 else "epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    tokenizer = load_clip_tokenizer(pad_token="!" if sd2 else "<|endoftext|>")
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(path: str | Path, family: Family = "sd1", seed: int = 0) -> Path:
    path = Path(path)
    build_tiny_pipeline(family, seed).save_pretrained(path, safe_serialization=True)
    return path
