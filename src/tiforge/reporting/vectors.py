"""The vectors being trained, measured against their text encoder's own vocabulary: their norms, the
vocabulary's norm range, and the vocabulary tokens nearest to each vector."""

from __future__ import annotations

from functools import cached_property

import torch

from tiforge.embeddings.vocabulary import NormRange, nearest_tokens, token_text

NEAREST = 5


class VectorWatch:
    def __init__(self, prompt_encoder, placeholders):
        self.encoder = prompt_encoder
        self.placeholders = placeholders

    def labels(self, count: int) -> list[str]:
        """Each vector row by its tokenizer entry (<tok>, <tok>_1, ...) where the rows are the
        placeholders' in order; by number otherwise."""
        names = [name for placeholder in self.placeholders for name in placeholder.tokens]
        return names if len(names) == count else [f"vector {i}" for i in range(count)]

    @cached_property
    def ranges(self) -> dict[str, NormRange]:
        return {name: NormRange.of(self._table(i)) for i, name in enumerate(self.encoder.names)}

    def norms(self) -> dict[str, list[float]]:
        return {name: v.float().norm(dim=1).tolist() for name, v in self.encoder.vectors().items()}

    @torch.no_grad()
    def nearest(self, k: int = NEAREST) -> dict[str, list[list[list]]]:
        """{encoder: per vector [[token, id, cosine], ...]} (JSON-ready)."""
        out = {}
        for i, (name, vectors) in enumerate(self.encoder.vectors().items()):
            tokenizer = self.encoder.tokenizers[i]
            out[name] = [[[token_text(tokenizer, j), j, round(s, 4)] for j, s in row]
                         for row in nearest_tokens(vectors, self._table(i), k)]
        return out

    def _table(self, index: int) -> torch.Tensor:
        # The frozen vocabulary only: the placeholder's rows are not in it (model.placeholders).
        return self.encoder.text_encoders[index].get_input_embeddings().weight
