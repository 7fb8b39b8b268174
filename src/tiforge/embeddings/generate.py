"""`tiforge generate`: pictures from a model with one or more embeddings loaded, the way
diffusers' `load_textual_inversion` and kohya's `--textual_inversion_embeddings` do it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tiforge.embeddings.files import EmbeddingFileError, load_embedding
from tiforge.model.clip_skip import checked_clip_skip
from tiforge.model.loading import is_sdxl_model, load_sd_components
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.training.validation import make_pipeline, prompt_kwargs

log = logging.getLogger("tiforge")


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


def recorded_encoding(files: list[str]) -> tuple[int | None, int | None, str | None]:
    """(clip_skip, max_token_length, file): what the first embedding that records them was trained with."""
    for file in files:
        meta = load_embedding(file).metadata
        skip, length = meta.get("tiforge.clip_skip"), meta.get("tiforge.max_token_length")
        if skip or length:
            return (int(skip) if skip else None), (int(length) if length else None), file
    return None, None, None


def resolve_encoding(parts, files: list[str], clip_skip: int | None,
                     max_token_length: int | None) -> tuple[int | None, int | None]:
    """The flags, else what the embeddings were trained with; checked against the model (a clip skip
    past the text encoder's layers is refused, as `train` refuses it) and said in the log."""
    recorded_skip, recorded_length, file = recorded_encoding(files)
    skip_name = "--clip-skip"
    if clip_skip is None and recorded_skip is not None:
        clip_skip, skip_name = recorded_skip, f"clip_skip recorded in {file}"
        log.info("clip_skip %d: as %s was trained (its metadata); --clip-skip overrides it", clip_skip, file)
    if max_token_length is None and recorded_length is not None:
        max_token_length = recorded_length
        log.info("max_token_length %d: as %s was trained (its metadata); --max-token-length overrides it",
                 max_token_length, file)
    clip_skip = checked_clip_skip(clip_skip, parts.text_encoder, parts.is_sdxl, parts.family, skip_name)
    return clip_skip, max_token_length


def warn_if_cut(pipe, label: str, text: str, max_token_length: int | None) -> None:
    """CLIP reads 75 tokens per window; what is beyond the last window is dropped without a word
    from the pipeline, so say how much and which --max-token-length would keep it."""
    if not text:
        return
    tokens = len(pipe.tokenizer(text, add_special_tokens=False).input_ids)
    window = max_token_length or 75
    if tokens <= window:
        return
    fits = next((n for n in (150, 225) if n >= tokens), None)
    hint = (f"--max-token-length {fits} would fit it" if fits
            else "even --max-token-length 225 does not fit it; shorten it")
    log.warning("the %s is %d tokens (triggers expanded to their vectors' tokens) and the window holds %d: "
                "its last %d tokens are cut off; %s", label, tokens, window, tokens - window, hint)


def expand_triggers(pipe, text: str) -> str:
    """A trigger -> its vectors' tokens, as diffusers' pipelines do before tokenizing."""
    return pipe.maybe_convert_prompt(text, pipe.tokenizer)


def prompt_arguments(pipe, prompt: str, negative_prompt: str, clip_skip: int | None,
                     max_token_length: int | None) -> dict:
    """The pipeline's own prompt encoding, or - with clip skip or long prompts, which it lacks -
    tiforge's (`PromptEncoder`, the very one training and validation use)."""
    if (clip_skip or 1) == 1 and (max_token_length or 75) == 75:
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}
    encoders = _encoders_of(pipe)
    encoder = PromptEncoder(encoders, len(encoders) == 2, clip_skip, max_token_length)
    encoder.output_dtype = pipe.unet.dtype
    with torch.no_grad():
        return prompt_kwargs(encoder, expand_triggers(pipe, prompt), expand_triggers(pipe, negative_prompt),
                             getattr(pipe.config, "force_zeros_for_empty_prompt", True))


def generate_images(
    *, model: str, embeddings: list[str], prompt: str, tokens: list[str] | None = None, negative_prompt: str = "",
    steps: int = 30, guidance: float = 7.5, seed: int = 0, width: int | None = None, height: int | None = None,
    count: int = 1, out_dir: str | Path = "tiforge-images", single_file_config: str | None = None,
    hf_variant: str | None = None, clip_skip: int | None = None, max_token_length: int | None = None,
) -> list[Path]:
    """`clip_skip` / `max_token_length` default to what the embedding was trained with (its metadata)."""
    parts = load_sd_components(model, hf_variant, single_file_config, sdxl=is_sdxl_model(model, single_file_config))
    clip_skip, max_token_length = resolve_encoding(parts, embeddings, clip_skip, max_token_length)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = make_pipeline(parts, PromptEncoder.of(parts)).to(device)
    triggers = load_embeddings_into(pipe, embeddings, tokens)
    missing = [t for t in triggers if t not in prompt]
    if missing:
        raise EmbeddingFileError(f"the prompt does not use the trigger(s) {missing}; available: {triggers}")
    for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        warn_if_cut(pipe, label, expand_triggers(pipe, text) if text else "", max_token_length)
    generator = torch.Generator("cpu").manual_seed(seed)
    images = pipe(**prompt_arguments(pipe, prompt, negative_prompt, clip_skip, max_token_length),
                  num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=count, width=width,
                  height=height, generator=generator).images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save_new_image(image, out, f"{seed}_{i:03d}") for i, image in enumerate(images)]


def save_new_image(image, folder: Path, stem: str) -> Path:
    """`<stem>.png`, or `<stem>-1.png`, `-2`, ... when taken: like A1111, generate never overwrites
    pictures from an earlier run (the same seed gives the same names)."""
    for k in range(100_000):
        path = folder / (f"{stem}.png" if k == 0 else f"{stem}-{k}.png")
        try:
            with open(path, "xb") as f:  # exclusive: a file that appears meanwhile is not overwritten either
                image.save(f, format="PNG")
        except FileExistsError:
            continue
        if k:
            log.info("%s exists; wrote %s (generate never overwrites)", f"{stem}.png", path.name)
        return path
    raise EmbeddingFileError(f"{folder}: {stem}.png and 100000 numbered variants exist; choose another --out")
