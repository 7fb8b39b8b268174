"""Random-weight pipelines for benchmarks, saved once in the tiforge cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tiforge.model.clip_tokenizer import cache_dir, load_clip_tokenizer
from tiforge.toy.tiny import save_tiny_pipeline


def _build_sd15_random(seed: int = 0):
    """The SD 1.5 architecture (UNet 860M, CLIP ViT-L text encoder, KL VAE) with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # diffusers' defaults are SD 1.x
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
    ))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _build_sdxl_random(seed: int = 0):
    """The SDXL base architecture (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG, KL VAE) with random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
        scaling_factor=0.13025,
    )
    clip_l = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
    ))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=0,
    ))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=load_clip_tokenizer(),
                                     tokenizer_2=load_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler)


def model_dir(size: str) -> Path:
    target = cache_dir() / "bench" / f"{size}-v1"
    if (target / "model_index.json").is_file():
        return target
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if size == "tiny":
        save_tiny_pipeline(tmp, "sd1")
    elif size == "tiny-xl":
        save_tiny_pipeline(tmp, "sdxl")
    elif size == "sd15":
        _build_sd15_random().save_pretrained(tmp, safe_serialization=True)
    elif size == "sdxl":
        # stored in fp16 (as SDXL is published) to halve the 13 GB; training loads it in fp32
        _build_sdxl_random().to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    else:
        raise ValueError(f"unknown model size {size!r}")
    os.replace(tmp, target)
    return target
