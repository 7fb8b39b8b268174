"""Validation images: the placeholder in real prompts, generated with the model being trained."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .tokens import Placeholder

log = logging.getLogger(__name__)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    """Prompt embeddings as diffusers' `encode_prompt` computes them (no clip-skip, no mask)."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(device))[0]


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    cols = max(1, (len(images) + rows - 1) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


@contextlib.contextmanager
def _cpu_offload(pipe, device: torch.device, enabled: bool):
    if not enabled:
        yield
        return
    if device.type != "cuda":
        log.info("enable_cpu_offload_during_validation has no effect without a CUDA device")
        yield
        return
    modules = [pipe.text_encoder, pipe.unet, pipe.vae]
    pipe.enable_model_cpu_offload(device=device)
    try:
        yield
    finally:
        pipe.remove_all_hooks()
        for m in modules:
            m.to(device)


@torch.no_grad()
def generate_validation_images(
    *,
    components,
    text_encoder,
    placeholder: Placeholder,
    prompts: list[str],
    negative_prompts: list[str] | None,
    images_per_prompt: int,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: tuple[int, int],
    seed: int | None,
    device: torch.device,
    out_dir: Path,
    cpu_offload: bool = False,
    autocast=contextlib.nullcontext,
) -> list[list[Image.Image]]:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    vae_device = next(components.vae.parameters()).device
    components.vae.to(device)  # it may have been parked on the CPU after latent caching
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DPMSolverMultistepScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_images: list[list[Image.Image]] = []
    was_training = text_encoder.training
    text_encoder.eval()
    try:
        with _cpu_offload(pipe, device, cpu_offload), autocast():
            for i, prompt in enumerate(prompts):
                negative = negative_prompts[i] if negative_prompts else ""
                # Our own encoding, so the images show exactly the vectors being trained.
                embeds = encode_prompts(components.tokenizer, text_encoder, [placeholder.expand(prompt)], device)
                negative_embeds = encode_prompts(components.tokenizer, text_encoder, [placeholder.expand(negative)], device)
                generator = torch.Generator(device="cpu").manual_seed((seed or 0) + i)
                images = pipe(
                    prompt_embeds=embeds,
                    negative_prompt_embeds=negative_embeds,
                    num_images_per_prompt=images_per_prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    height=resolution[0],
                    width=resolution[1],
                    generator=generator,
                ).images
                for j, image in enumerate(images):
                    image.save(out_dir / f"prompt{i:02d}_image{j:02d}.png")
                all_images.append(images)
    finally:
        text_encoder.train(was_training)
        components.vae.to(vae_device)
    flat = [im for row in all_images for im in row]
    if flat:
        image_grid(flat, rows=len(all_images)).save(out_dir / "grid.png")
    return all_images


def log_validation_images(trackers, all_images: list[list[Image.Image]], prompts: list[str], step: int) -> None:
    for tracker in trackers:
        if tracker.name == "tensorboard":
            for i, images in enumerate(all_images):
                arr = np.stack([np.asarray(im) for im in images])
                tracker.writer.add_images(f"validation/{i:02d}: {prompts[i]}", arr, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(im, caption=prompts[i]) for i, row in enumerate(all_images) for im in row]},
                step=step,
            )
