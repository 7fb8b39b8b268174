"""`tiforge generate`: pictures from a model with one or more embeddings loaded, the way
diffusers' `load_textual_inversion` and kohya's `--textual_inversion_embeddings` do it."""

from __future__ import annotations

from pathlib import Path

import torch

from .embedding_files import EmbeddingFileError, load_embedding
from .model_loading import load_sd_components
from .tokens import check_width


def load_embeddings_into(pipe, files: list[str], tokens: list[str] | None = None) -> list[str]:
    """Adds each file's vectors under its trigger; returns the triggers to use in prompts."""
    tokens = tokens or []
    if tokens and len(tokens) != len(files):
        raise EmbeddingFileError(f"--token given {len(tokens)} time(s) for {len(files)} embedding file(s); give one per file")
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    triggers = []
    for i, file in enumerate(files):
        emb = load_embedding(file)
        if emb.is_sdxl:
            raise EmbeddingFileError(f"{file}: an SDXL embedding (clip_l + clip_g) does not fit an SD 1.x/2.x model")
        trigger = tokens[i] if tokens else emb.trigger(Path(file))
        check_width(emb.single.shape[1], width, f"{trigger} ({file})")
        if trigger in pipe.tokenizer.get_vocab() or trigger in triggers:
            raise EmbeddingFileError(f"{file}: the trigger {trigger!r} is already taken; pass --token to rename it")
        pipe.load_textual_inversion({trigger: emb.single.float()}, token=trigger)
        triggers.append(trigger)
    return triggers


def generate_images(
    *, model: str, embeddings: list[str], prompt: str, tokens: list[str] | None = None, negative_prompt: str = "",
    steps: int = 30, guidance: float = 7.5, seed: int = 0, width: int | None = None, height: int | None = None,
    count: int = 1, out_dir: str | Path = "tiforge-images", single_file_config: str | None = None,
    hf_variant: str | None = None,
) -> list[Path]:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    parts = load_sd_components(model, hf_variant, single_file_config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=DPMSolverMultistepScheduler.from_config(parts.noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    triggers = load_embeddings_into(pipe, embeddings, tokens)
    missing = [t for t in triggers if t not in prompt]
    if missing:
        raise EmbeddingFileError(f"the prompt does not use the trigger(s) {missing}; available: {triggers}")
    generator = torch.Generator("cpu").manual_seed(seed)
    images = pipe(prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=count, width=width, height=height, generator=generator).images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{seed}_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths
