"""Validation images: the placeholder in real prompts, generated with the model being trained."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tiforge.model.text_conditioning import PromptEncoder

log = logging.getLogger(__name__)


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
    modules = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet, pipe.vae) if m is not None]
    pipe.enable_model_cpu_offload(device=device)
    try:
        yield
    finally:
        pipe.remove_all_hooks()
        for m in modules:
            m.to(device)


@torch.no_grad()
def make_pipeline(components, prompt_encoder: PromptEncoder, with_text_encoders: bool = True):
    """A diffusers pipeline around the frozen parts and the text encoders being trained. Without them
    (validation passes `prompt_encoder`'s own output), the pipeline keeps the conditioning in the
    dtype it was given instead of recasting it to the text encoders' (float32 vectors make that
    float32 even when the UNet runs in bf16/fp16)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(components.noise_scheduler.config)
    encoders, tokenizers = list(prompt_encoder.text_encoders), prompt_encoder.tokenizers
    if not with_text_encoders:
        encoders = [None] * len(encoders)
    if prompt_encoder.sdxl:
        return StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1], unet=components.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
        )
    return StableDiffusionPipeline(
        vae=components.vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=components.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def prompt_kwargs(prompt_encoder: PromptEncoder, prompt: str, negative: str, zeros_for_empty: bool = True) -> dict:
    """Our own encoding of the prompts, so the images show exactly the vectors being trained."""
    embeds, pooled = prompt_encoder.encode([prompt])
    negative_embeds, negative_pooled = prompt_encoder.encode([negative])
    if prompt_encoder.sdxl and not negative and zeros_for_empty:
        # As SDXL's pipeline does: "no negative prompt" is zeros (force_zeros_for_empty_prompt).
        negative_embeds, negative_pooled = torch.zeros_like(negative_embeds), torch.zeros_like(negative_pooled)
    kwargs = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if prompt_encoder.sdxl:
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    return kwargs


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, device: torch.device) -> list[Image.Image]:
    """Latents (in the UNet's dtype) -> pictures, decoded in the VAE's own dtype: `vae_dtype` may differ
    from the UNet's, which diffusers' pipelines do not allow for. An fp16 VAE that asks for it
    (`force_upcast`, SDXL's) decodes in float32 as diffusers does, since it overflows in fp16."""
    vae = pipe.vae
    own_dtype = vae.dtype
    upcast = own_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else own_dtype
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    latents = latents.to(device, dtype)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        latents = latents * torch.tensor(std, dtype=dtype, device=device).view(shape) / vae.config.scaling_factor \
            + torch.tensor(mean, dtype=dtype, device=device).view(shape)
    else:
        latents = latents / vae.config.scaling_factor
    if upcast:
        vae.to(dtype=dtype)
    try:
        pixels = vae.decode(latents, return_dict=False)[0]
    finally:
        vae.to(dtype=own_dtype)
    return pipe.image_processor.postprocess(pixels.float(), output_type="pil")


def generate_validation_images(
    *,
    components,
    prompt_encoder: PromptEncoder,
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
    progress: bool = False,
) -> list[list[Image.Image]]:
    from tqdm.auto import tqdm

    vae_device = next(components.vae.parameters()).device
    components.vae.to(device)  # it may have been parked on the CPU after latent caching
    pipe = make_pipeline(components, prompt_encoder, with_text_encoders=False)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_images: list[list[Image.Image]] = []
    was_training = prompt_encoder.training
    prompt_encoder.eval()
    bar = tqdm(total=len(prompts), desc=f"validation ({out_dir.name})", unit="prompt", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        with _cpu_offload(pipe, device, cpu_offload), autocast():
            for i, prompt in enumerate(prompts):
                negative = negative_prompts[i] if negative_prompts else ""
                generator = torch.Generator(device="cpu").manual_seed((seed or 0) + i)
                latents = pipe(
                    **prompt_kwargs(prompt_encoder, prompt, negative,
                                    getattr(pipe.config, "force_zeros_for_empty_prompt", True)),
                    num_images_per_prompt=images_per_prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    height=resolution[0],
                    width=resolution[1],
                    generator=generator,
                    output_type="latent",
                ).images
                images = decode_latents(pipe, latents, device)
                for j, image in enumerate(images):
                    image.save(out_dir / f"prompt{i:02d}_image{j:02d}.png")
                all_images.append(images)
                bar.update(1)
    finally:
        bar.close()
        prompt_encoder.train(was_training)
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


def validate_with_config(config, components, prompt_encoder: PromptEncoder, out_dir: Path, seed: int | None,
                         device: torch.device, autocast, trackers, step: int, progress: bool) -> None:
    """Validation as a run's config asks for it: its prompts, counts, steps and size; the pictures
    and their grid in `out_dir`, and in the trackers."""
    images = generate_validation_images(
        components=components,
        prompt_encoder=prompt_encoder,
        prompts=config.validation_prompts,
        negative_prompts=config.negative_validation_prompts,
        images_per_prompt=config.num_validation_images_per_prompt,
        num_inference_steps=config.num_validation_inference_steps,
        guidance_scale=config.validation_guidance_scale,
        resolution=config.data_loader.height_width,
        seed=seed,
        device=device,
        out_dir=out_dir,
        cpu_offload=config.enable_cpu_offload_during_validation,
        autocast=autocast,
        progress=progress,
    )
    log_validation_images(trackers, images, config.validation_prompts, step)
