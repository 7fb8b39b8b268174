"""`tiforge generate`: pictures from a model with one or more embeddings loaded, the way
diffusers' `load_textual_inversion` and kohya's `--textual_inversion_embeddings` do it."""

from __future__ import annotations

from pathlib import Path

import torch

from tiforge.embeddings.files import EmbeddingFileError, load_embedding
from tiforge.model.loading import is_sdxl_model, load_sd_components
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.training.validation import make_pipeline, prompt_kwargs


def load_embeddings_into(pipe, files: list[str], tokens: list[str] | None = None) -> list[str]:
    """Adds each file's vectors under its trigger, the way diffusers users do (SDXL: once per text
    encoder); returns the triggers to use in prompts."""
    tokens = tokens or []
    if tokens and len(tokens) != len(files):
        raise EmbeddingFileError(f"--token given {len(tokens)} time(s) for {len(files)} embedding file(s); give one per file")
    encoders = _encoders_of(pipe)
    check = PromptEncoder(encoders, sdxl=len(encoders) == 2)
    triggers = []
    for i, file in enumerate(files):
        emb = load_embedding(file)
        trigger = tokens[i] if tokens else emb.trigger(Path(file))
        vectors = check.vectors_of(emb, f"{trigger} ({file})")
        if trigger in pipe.tokenizer.get_vocab() or trigger in triggers:
            raise EmbeddingFileError(f"{file}: the trigger {trigger!r} is already taken; pass --token to rename it")
        for name, tokenizer, encoder in encoders:
            pipe.load_textual_inversion(vectors[name], token=trigger, tokenizer=tokenizer, text_encoder=encoder)
        triggers.append(trigger)
    return triggers


def _encoders_of(pipe) -> list[tuple]:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
    return [("text_encoder", pipe.tokenizer, pipe.text_encoder)]


def recorded_encoding(files: list[str]) -> tuple[int | None, int | None]:
    """(clip_skip, max_token_length) the first embedding that records them was trained with."""
    for file in files:
        meta = load_embedding(file).metadata
        skip, length = meta.get("tiforge.clip_skip"), meta.get("tiforge.max_token_length")
        if skip or length:
            return (int(skip) if skip else None), (int(length) if length else None)
    return None, None


def prompt_arguments(pipe, prompt: str, negative_prompt: str, clip_skip: int | None,
                     max_token_length: int | None) -> dict:
    """The pipeline's own prompt encoding, or - with clip skip or long prompts, which it lacks -
    tiforge's (`PromptEncoder`, the very one training and validation use)."""
    if (clip_skip or 1) == 1 and (max_token_length or 75) == 75:
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}
    encoders = _encoders_of(pipe)
    encoder = PromptEncoder(encoders, len(encoders) == 2, clip_skip, max_token_length)
    encoder.output_dtype = pipe.unet.dtype
    expand = (lambda text: pipe.maybe_convert_prompt(text, pipe.tokenizer))  # a trigger -> its vectors' tokens
    with torch.no_grad():
        return prompt_kwargs(encoder, expand(prompt), expand(negative_prompt),
                             getattr(pipe.config, "force_zeros_for_empty_prompt", True))


def generate_images(
    *, model: str, embeddings: list[str], prompt: str, tokens: list[str] | None = None, negative_prompt: str = "",
    steps: int = 30, guidance: float = 7.5, seed: int = 0, width: int | None = None, height: int | None = None,
    count: int = 1, out_dir: str | Path = "tiforge-images", single_file_config: str | None = None,
    hf_variant: str | None = None, clip_skip: int | None = None, max_token_length: int | None = None,
) -> list[Path]:
    """`clip_skip` / `max_token_length` default to what the embedding was trained with (its metadata)."""
    parts = load_sd_components(model, hf_variant, single_file_config, sdxl=is_sdxl_model(model, single_file_config))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = make_pipeline(parts, PromptEncoder.of(parts)).to(device)
    triggers = load_embeddings_into(pipe, embeddings, tokens)
    missing = [t for t in triggers if t not in prompt]
    if missing:
        raise EmbeddingFileError(f"the prompt does not use the trigger(s) {missing}; available: {triggers}")
    recorded = recorded_encoding(embeddings)
    clip_skip = recorded[0] if clip_skip is None else clip_skip
    max_token_length = recorded[1] if max_token_length is None else max_token_length
    generator = torch.Generator("cpu").manual_seed(seed)
    images = pipe(**prompt_arguments(pipe, prompt, negative_prompt, clip_skip, max_token_length),
                  num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=count, width=width,
                  height=height, generator=generator).images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{seed}_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths
