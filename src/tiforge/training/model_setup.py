"""The frozen model as training needs it, and the vectors the placeholder starts from."""

from __future__ import annotations

import logging

import torch

from tiforge.config.schema import TrainingConfig
from tiforge.model.placeholders import initial_vectors
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.training.acceleration import use_channels_last, warn_emulated_half_precision
from tiforge.training.conditioning_setup import check_conditioning_options, resolve_prediction_type

log = logging.getLogger("tiforge")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prepare_frozen_model(parts, config: TrainingConfig, device) -> tuple[PromptEncoder, str]:
    """Freezes every network, moves it to the device, applies the memory settings; returns the text
    side as one module and the prediction type the loss uses."""
    prediction_type = resolve_prediction_type(parts, config)
    check_conditioning_options(parts, config, prediction_type)
    for module in parts.frozen_modules:
        module.requires_grad_(False)
        module.to(device)
    prompt_encoder = PromptEncoder.of(parts, config.clip_skip, config.max_token_length)
    log.info("%s model (text width %s), prediction_type %s", parts.family,
             " + ".join(map(str, prompt_encoder.widths.values())), prediction_type)
    if config.gradient_checkpointing:
        # The models only checkpoint in train mode; none has dropout, so outputs are unchanged.
        parts.unet.train()
        parts.unet.enable_gradient_checkpointing()
        for encoder in prompt_encoder.text_encoders:
            encoder.train()
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.xformers:
        parts.unet.enable_xformers_memory_efficient_attention()
    warn_emulated_half_precision(config, torch.device(device).type)
    use_channels_last(parts.unet, torch.device(device).type)
    return prompt_encoder, prediction_type


def starting_vectors(config: TrainingConfig, parts, state: dict | None) -> dict[str, torch.Tensor]:
    """The placeholder's vectors per text encoder: a checkpoint's, or fresh from the initializer."""
    if state:
        vectors = state["vectors"]
        if isinstance(vectors, torch.Tensor):  # checkpoints of format 1 held one encoder's tensor
            vectors = {parts.text_encoders[0][0]: vectors}
        return vectors
    return {
        name: initial_vectors(
            tokenizer, encoder.get_input_embeddings().weight, num_vectors=config.num_vectors,
            initializer_token=config.initializer_token, initial_phrase=config.initial_phrase,
            initial_embedding_file=config.initial_embedding_file,
            placeholder_token=config.placeholder_token, part=name,
            text_encoder=encoder if config.initialize_from_text_encoder_output else None,
        )
        for name, tokenizer, encoder in parts.text_encoders
    }
