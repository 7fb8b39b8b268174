"""The placeholder token: its tokenizer entries, its initial vectors, and the trainable embedding.

The learned vectors live in their own `nn.Parameter` (num_vectors x dim), spliced into the text
encoder at the token-embedding module. The 49408-row vocabulary table stays frozen and is never seen
by the optimizer, so gradients, Adam state and weight decay touch only the new rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tiforge.embeddings.files import SDXL_KEYS, EmbeddingFileError, load_embedding
from tiforge.model.widths import family_of_width


class TokenError(ValueError):
    """A placeholder or initializer that cannot be used; the message names the token."""


@dataclass(frozen=True)
class Placeholder:
    token: str  # what users write in prompts and captions
    tokens: tuple[str, ...]  # one tokenizer entry per vector: token, token_1, token_2, ...
    ids: tuple[int, ...]

    @property
    def num_vectors(self) -> int:
        return len(self.tokens)

    def expand(self, text: str) -> str:
        """Replace the placeholder with all of its vector tokens, wherever it stands."""
        return text.replace(self.token, " ".join(self.tokens))


def vector_token_names(token: str, num_vectors: int) -> tuple[str, ...]:
    # The diffusers naming: its pipelines expand `token` to `token token_1 ...` on their own.
    return (token,) + tuple(f"{token}_{i}" for i in range(1, num_vectors))


def add_placeholder(tokenizer, token: str, num_vectors: int) -> Placeholder:
    existing = tokenizer.encode(token, add_special_tokens=False)
    if len(existing) == 1 and existing[0] < tokenizer.vocab_size:
        raise TokenError(
            f"placeholder_token {token!r} is already a word of the tokenizer's vocabulary (id {existing[0]}); "
            "training it would change what that word means. Choose a unique token such as '<my-concept>'"
        )
    names = vector_token_names(token, num_vectors)
    clash = [n for n in names if n in tokenizer.get_vocab()]
    if clash:
        raise TokenError(f"placeholder_token {token!r}: the tokenizer already has {clash}; choose another token")
    tokenizer.add_tokens(list(names))
    ids = tuple(tokenizer.convert_tokens_to_ids(list(names)))
    return Placeholder(token=token, tokens=names, ids=ids)


def single_token_id(tokenizer, word: str, field: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TokenError(
            f"{field} {word!r} must be a single token, but the tokenizer splits it into {len(ids)}: {pieces}. "
            "Choose one word (e.g. 'dog'), or use initial_phrase for several words"
        )
    return ids[0]


def initial_vectors(
    tokenizer,
    table: torch.Tensor,
    *,
    num_vectors: int,
    initializer_token: str | None = None,
    initial_phrase: str | None = None,
    initial_embedding_file: str | None = None,
    placeholder_token: str | None = None,
    part: str | None = None,
    text_encoder=None,
) -> torch.Tensor:
    """The starting vectors, [n, dim] in fp32, from exactly one of the three initializers.

    `num_vectors` applies to initializer_token; a phrase or a file brings its own count. `part`
    names the SDXL text encoder (clip_l / clip_g) whose half of an SDXL embedding file to take. Given
    `text_encoder`, a token or phrase starts from that encoder's output for it (cross initialization)
    instead of its rows of `table`."""
    dim = table.shape[1]
    rows = (lambda ids: table[ids].float().clone()) if text_encoder is None else \
        (lambda ids: encoder_output_rows(tokenizer, text_encoder, ids))
    if initializer_token is not None:
        row = rows([single_token_id(tokenizer, initializer_token, "initializer_token")])
        return row.repeat(num_vectors, 1)
    if initial_phrase is not None:
        ids = tokenizer.encode(initial_phrase, add_special_tokens=False)
        if not ids:
            raise TokenError(f"initial_phrase {initial_phrase!r} has no tokens")
        return rows(ids)
    if initial_embedding_file is not None:
        emb = load_embedding(initial_embedding_file)
        # Only the diffusers layout stores the trigger itself; A1111 and kohya name it by the file.
        if emb.format == "diffusers" and placeholder_token is not None and emb.token != placeholder_token:
            raise EmbeddingFileError(
                f"{initial_embedding_file}: holds token {emb.token!r} but placeholder_token is {placeholder_token!r}; "
                "they must match"
            )
        if part in SDXL_KEYS and not emb.is_sdxl:
            raise EmbeddingFileError(
                f"{initial_embedding_file}: holds an SD 1.x/2.x embedding (token dimension {emb.single.shape[1]}); "
                "an SDXL model needs an SDXL embedding file with clip_l and clip_g vectors"
            )
        if part not in SDXL_KEYS and emb.is_sdxl:
            raise EmbeddingFileError(
                f"{initial_embedding_file}: holds an SDXL embedding (clip_l + clip_g); it cannot initialize an "
                "SD 1.x/2.x model. Train with type: SDXL_TEXTUAL_INVERSION, or start from an SD 1.x/2.x embedding"
            )
        vectors = emb.vectors[part] if part in SDXL_KEYS else emb.single
        check_width(vectors.shape[1], dim, f"{initial_embedding_file}{f' [{part}]' if part in SDXL_KEYS else ''}")
        return vectors.float().clone()
    raise TokenError("no initializer given: set initializer_token, initial_phrase or initial_embedding_file")


@torch.no_grad()
def encoder_output_rows(tokenizer, text_encoder, ids: list[int]) -> torch.Tensor:
    """The encoder's final hidden state at `ids`, written as a prompt (start token, the ids, end and
    padding tokens), [len(ids), width] in fp32: "Cross Initialization" (arXiv 2312.15905) starts the
    learned vectors here, where their norm and direction are much closer to where training takes them
    than the input embedding's. CLIP's causal attention makes the padding irrelevant to these rows."""
    length = tokenizer.model_max_length
    if len(ids) + 2 > length:
        raise TokenError(f"initial_phrase has {len(ids)} tokens; at most {length - 2} fit the text encoder")
    prompt = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    prompt += [tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id] * (
        length - len(prompt))
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(torch.tensor([prompt], device=device)).last_hidden_state
    return hidden[0, 1 : 1 + len(ids)].float().cpu().clone()


def check_width(file_width: int, model_width: int, name: str) -> None:
    if file_width != model_width:
        raise EmbeddingFileError(
            f"Cannot load embedding for {name}. It was trained on a model with token dimension {file_width} "
            f"({family_of_width(file_width)}), but the current model has token dimension {model_width} "
            f"({family_of_width(model_width)})."
        )


class PlaceholderEmbedding(nn.Module):
    """Token embedding: frozen vocabulary rows below `first_id`, trainable `vectors` from it on."""

    def __init__(self, base: nn.Embedding, vectors: torch.Tensor, first_id: int):
        super().__init__()
        if first_id > base.num_embeddings:
            raise ValueError(f"added token ids start at {first_id}, past the {base.num_embeddings}-row table")
        self.base = base
        self.first_id = first_id
        self.vectors = nn.Parameter(vectors.detach().float().clone())

    @property
    def weight(self) -> torch.Tensor:
        # Some library code reads `.weight` for the dtype/device or width of the embedding.
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # No data-dependent branch: keeps the step free of device syncs and graph breaks.
        is_new = (input_ids >= self.first_id).unsqueeze(-1)
        frozen = self.base(input_ids.clamp(max=self.first_id - 1))
        learned = nn.functional.embedding((input_ids - self.first_id).clamp(min=0), self.vectors)
        return torch.where(is_new, learned.to(frozen.dtype), frozen)


def install_placeholder_embedding(text_encoder, placeholder: Placeholder, vectors: torch.Tensor) -> PlaceholderEmbedding:
    ids = list(placeholder.ids)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise TokenError(f"placeholder ids {ids} are not contiguous; the tokenizer had unexpected added tokens")
    base = text_encoder.get_input_embeddings()
    if isinstance(base, PlaceholderEmbedding):
        base = base.base
    module = PlaceholderEmbedding(base, vectors, first_id=ids[0])
    text_encoder.set_input_embeddings(module)
    return module
