"""From caption to what the UNet is conditioned on, for both model families.

SD 1.x/2.x: one text encoder; the UNet reads its last hidden state, or with `clip_skip` N the N-th
from the end passed through the encoder's final layer norm (kohya's and A1111's clip skip).
SDXL: two text encoders (CLIP ViT-L "clip_l" and OpenCLIP bigG "clip_g"); the UNet reads both
penultimate hidden states side by side, plus clip_g's pooled projection and six numbers (original
size, crop top-left, target size) - exactly what diffusers' `StableDiffusionXLPipeline.encode_prompt`
and `_get_add_time_ids` compute, so that embeddings trained here mean the same at inference.

The placeholder gets its own trainable vectors in every text encoder; nothing else trains.
Captions longer than 75 tokens (`max_token_length`) are encoded in windows: `model.long_prompts`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tiforge.model.long_prompts import first_window, join_windows, window_ids
from tiforge.model.placeholders import Placeholder, PlaceholderEmbedding, add_placeholder, install_placeholder_embedding


def tokenize(tokenizers: list[Any], texts: list[str], max_token_length: int | None = None) -> torch.Tensor:
    """Token ids [batch, encoders, 77 x windows]: each encoder pads its own way (SD 2.x and clip_g
    with "!"); one 77-token window unless `max_token_length` asks for 150 or 225 tokens."""
    return torch.stack([window_ids(tok, texts, max_token_length) for tok in tokenizers], dim=1)


def sdxl_time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size) -> torch.Tensor:
    """[batch, 6]: (original h, w, crop top, left, target h, w) per item, as SDXL was trained.
    `target_size` is one (h, w) for the batch, or a [batch, 2] tensor (aspect-ratio buckets)."""
    target = torch.as_tensor(target_size, dtype=original_size.dtype).expand(original_size.shape[0], 2)
    return torch.cat([original_size, crop_top_left, target], dim=1)


class PromptEncoder(nn.Module):
    """The text side of the model as one module: token ids in, UNet conditioning out.

    Being one module lets accelerate wrap it once (DDP sees every trainable vector), and lets the
    training loop, validation and the interop tests share one definition of "the prompt embedding".
    """

    def __init__(self, encoders: list[tuple[str, Any, nn.Module]], sdxl: bool, clip_skip: int | None = None,
                 max_token_length: int | None = None):
        super().__init__()
        self.names = [name for name, _, _ in encoders]
        self.tokenizers = [tok for _, tok, _ in encoders]
        self.text_encoders = nn.ModuleList([enc for _, _, enc in encoders])
        self.sdxl = sdxl
        self.placeholder: Placeholder | None = None  # the first (the run's main embedding)
        self.placeholders: list[Placeholder] = []  # all of them, in the order they were added
        # What the UNet reads. The trainable vectors are float32, so the encoders' output can be
        # float32 even when the UNet runs in bf16/fp16; this is the one place that casts it.
        self.output_dtype: torch.dtype | None = None
        # SDXL always reads the penultimate layer of both encoders, so clip skip applies to SD only (kohya too)
        self.clip_skip = None if sdxl else clip_skip
        self.max_token_length = max_token_length

    @classmethod
    def of(cls, components, clip_skip: int | None = None, max_token_length: int | None = None) -> "PromptEncoder":
        encoder = cls(components.text_encoders, components.is_sdxl, clip_skip, max_token_length)
        encoder.output_dtype = components.unet.dtype
        return encoder

    # -- the placeholder --------------------------------------------------------------------------

    def add_placeholder(self, token: str, vectors: dict[str, torch.Tensor]) -> Placeholder:
        """Adds the placeholder's tokens to every tokenizer and splices in its trainable vectors; a
        second call adds a further placeholder (its own Parameter, ids right after the last)."""
        placeholders = [add_placeholder(tok, token, vectors[name].shape[0]) for name, tok in zip(self.names, self.tokenizers)]
        for name, encoder, placeholder in zip(self.names, self.text_encoders, placeholders):
            if self.placeholders:
                encoder.get_input_embeddings().append(vectors[name].to(encoder.device), placeholder.ids[0])
            else:
                install_placeholder_embedding(encoder, placeholder, vectors[name].to(encoder.device))
        # captions only need the token names, the same in every tokenizer
        self.placeholders.append(placeholders[0])
        self.placeholder = self.placeholders[0]
        return placeholders[0]

    @property
    def embeddings(self) -> list[PlaceholderEmbedding]:
        return [enc.get_input_embeddings() for enc in self.text_encoders]

    def parameters_of(self, index: int) -> list[nn.Parameter]:
        """The `index`-th placeholder's vectors, one Parameter per text encoder."""
        return [emb.blocks[index] for emb in self.embeddings]

    def trainable(self) -> list[nn.Parameter]:
        return [p for index in range(max(1, len(self.placeholders))) for p in self.parameters_of(index)]

    def vectors(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The `index`-th placeholder's vectors per text encoder (the first by default)."""
        return {name: p.detach() for name, p in zip(self.names, self.parameters_of(index))}

    def vectors_of(self, embedding, label: str = "embedding") -> dict[str, torch.Tensor]:
        """An embedding file's vectors keyed by this model's encoders; refuses the other family's and
        other widths with InvokeAI's wording ("Cannot load embedding for <label>. ...")."""
        from tiforge.embeddings.files import EmbeddingFileError
        from tiforge.model.placeholders import check_width

        if embedding.is_sdxl != self.sdxl:
            have = "an SDXL embedding (clip_l + clip_g)" if embedding.is_sdxl else "an SD 1.x/2.x embedding"
            raise EmbeddingFileError(
                f"{label}: {have} does not fit this {'SDXL' if self.sdxl else 'SD 1.x/2.x'} model"
            )
        vectors = dict(embedding.vectors) if self.sdxl else {self.names[0]: embedding.single}
        for name, width in self.widths.items():
            check_width(vectors[name].shape[1], width, f"{label} [{name}]" if self.sdxl else label)
        return {name: v.float() for name, v in vectors.items()}

    def file_vectors(self, index: int = 0) -> torch.Tensor | dict[str, torch.Tensor]:
        """What an embedding file stores: one tensor (SD) or `clip_l` + `clip_g` (SDXL)."""
        vectors = self.vectors(index)
        return vectors if self.sdxl else vectors[self.names[0]]

    def vector_norms(self) -> dict[str, float]:
        """Each learned vector's norm, keyed as the trackers log them (further placeholders by token)."""
        norms = {}
        for index in range(max(1, len(self.placeholders))):
            token = f"{self.placeholders[index].token}/" if index else ""
            for name, vectors in self.vectors(index).items():
                prefix = f"vector_norm/{token}{name}/" if self.sdxl else f"vector_norm/{token}"
                norms.update({f"{prefix}{i}": n for i, n in enumerate(vectors.float().norm(dim=1).tolist())})
        return norms

    @property
    def widths(self) -> dict[str, int]:
        return {name: enc.get_input_embeddings().embedding_dim for name, enc in zip(self.names, self.text_encoders)}

    # -- encoding ---------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizers, texts, self.max_token_length)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[batch, encoders, 77 x windows] ids -> (hidden states for cross-attention, pooled output or
        None), in `output_dtype` (the UNet's) - for training and validation alike."""
        hidden, pooled = self._encode_ids(input_ids)
        if self.output_dtype is None:
            return hidden, pooled
        return hidden.to(self.output_dtype), None if pooled is None else pooled.to(self.output_dtype)

    def _encode_ids(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_encoders = input_ids.shape[:2]
        # [batch, encoders, n x 77] -> [batch x n, encoders, 77]: every window of a caption on its own row
        windows = input_ids.reshape(batch, num_encoders, -1, 77).transpose(1, 2).reshape(-1, num_encoders, 77)
        if not self.sdxl:
            return join_windows(self._sd_hidden(windows[:, 0]), batch), None
        hidden, pooled = [], None
        for i, encoder in enumerate(self.text_encoders):
            out = encoder(windows[:, i].to(encoder.device), output_hidden_states=True)
            hidden.append(join_windows(out.hidden_states[-2], batch))
            pooled = first_window(out[0], batch)  # clip_g's projected text embedding (the last encoder's)
        return torch.cat(hidden, dim=-1), pooled

    def _sd_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        encoder = self.text_encoders[0]
        ids = ids.to(encoder.device)
        if not self.clip_skip or self.clip_skip == 1:
            return encoder(ids)[0]
        out = encoder(ids, output_hidden_states=True)
        # transformers 5 keeps the layers on the model itself; 4.x under `.text_model`
        final_layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
        return final_layer_norm(out.hidden_states[-self.clip_skip])

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts in users' words (placeholder unexpanded) -> conditioning."""
        return self(self.tokenize([expand_all(self.placeholders, p) for p in prompts]))


def expand_all(placeholders: list[Placeholder], text: str) -> str:
    """Every placeholder in `text` replaced by its vectors' tokens (tokens never contain each other:
    the config refuses that)."""
    for placeholder in placeholders:
        text = placeholder.expand(text)
    return text


def conditioning_metadata(prompt_encoder: PromptEncoder) -> dict[str, str]:
    """What an embedding file records of how its prompts were encoded, so that `generate` (and
    readers of kohya's `ss_` keys) encode them the same way."""
    out = {}
    if prompt_encoder.clip_skip:
        out.update({"tiforge.clip_skip": str(prompt_encoder.clip_skip), "ss_clip_skip": str(prompt_encoder.clip_skip)})
    if prompt_encoder.max_token_length:
        out.update({"tiforge.max_token_length": str(prompt_encoder.max_token_length),
                    "ss_max_token_length": str(prompt_encoder.max_token_length)})
    return out


def unet_conditioning(prompt_encoder: PromptEncoder, input_ids: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    """Hidden states and the extra UNet keyword arguments for one training batch (its crop facts and
    per-item training size, which differ between aspect-ratio buckets), in the encoder's output dtype."""
    hidden, pooled = prompt_encoder(input_ids)
    if pooled is None:
        return hidden, {}
    time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
    time_ids = time_ids.to(hidden.device, hidden.dtype)
    return hidden, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
