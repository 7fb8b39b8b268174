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

from tiforge.model.clip_tokenizer import load_clip_tokenizer

Family = Literal["sd1", "sd2", "sdxl"]

# SD 1.x uses CLIP ViT-L (width 768, epsilon); SD 2.x uses OpenCLIP ViT-H (width 1024,
# v-prediction, "!" padding, linear projections); SDXL uses CLIP ViT-L (768) beside OpenCLIP
# bigG (1280, "!" padding, projected pooled output). The tiny twins keep those differences at small
# sizes so that a family mix-up shows up as a width mismatch, as it does with real models: SDXL's
# clip_l is as wide as SD 1.x's encoder, its clip_g wider than anything else.
_TEXT_WIDTH = {"sd1": 32, "sd2": 48}
_SDXL_WIDTHS = (32, 64)
_SDXL_TIME_EMBED = 8


def _tiny_text_encoder(width: int, pad_token_id: int, act: str, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        hidden_act=act,
        projection_dim=width,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _tiny_vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
    )


def _tiny_unet(**family):
    """The tiny UNet every family shares; `family` holds what differs (widths, attention, SDXL's extras)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **family,
    )


def build_tiny_sdxl_pipeline(seed: int = 0):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    width_l, width_g = _SDXL_WIDTHS
    unet = _tiny_unet(
        cross_attention_dim=width_l + width_g,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED,
        # six size/crop numbers, each embedded, plus clip_g's pooled projection
        projection_class_embeddings_input_dim=6 * _SDXL_TIME_EMBED + width_g,
        transformer_layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(scaling_factor=0.13025),
        text_encoder=_tiny_text_encoder(width_l, 49407, "quick_gelu"),
        text_encoder_2=_tiny_text_encoder(width_g, 0, "gelu", with_projection=True),
        tokenizer=load_clip_tokenizer(),
        tokenizer_2=load_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_pipeline(family: Family = "sd1", seed: int = 0):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if family == "sdxl":
        return build_tiny_sdxl_pipeline(seed)
    if family not in _TEXT_WIDTH:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of sd1, sd2, sdxl")
    width = _TEXT_WIDTH[family]
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    unet = _tiny_unet(
        cross_attention_dim=width,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
    )
    vae = _tiny_vae()
    text_encoder = _tiny_text_encoder(width, 0 if sd2 else 49407, "gelu" if sd2 else "quick_gelu")
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
