"""A text encoder's vocabulary as a yardstick for learned vectors: their nearest tokens (cosine) and
the range of norms the encoder's own token vectors have. Shared by `tiforge inspect` and report.html."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """For each row of `vectors` [n, dim], the `k` rows of `table` [vocab, dim] most alike in direction:
    [(token id, cosine), ...], closest first. Runs where the table lives (no copy of it to the CPU)."""
    unit = torch.nn.functional.normalize
    queries = unit(vectors.detach().to(table.device).float(), dim=1)
    sims = queries @ unit(table.detach().float(), dim=1).T
    top = sims.topk(min(k, table.shape[0]), dim=1)
    return [[(int(i), float(s)) for s, i in zip(vals.tolist(), ids.tolist())]
            for vals, ids in zip(top.values, top.indices)]


def token_text(tokenizer, token_id: int) -> str:
    """A token as a reader sees it: its bytes decoded (CLIP's BPE stores "…" as "âĢ¦"), the end-of-word
    mark `</w>` dropped; an added token (a placeholder's) or a piece of a character as it is spelled."""
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if int(token_id) >= tokenizer.vocab_size:
        return token
    try:
        text = tokenizer.convert_tokens_to_string([token])
    except (KeyError, ValueError, TypeError):
        text = token
    text = text.replace("</w>", " ").strip()
    # a token holding part of a multi-byte character decodes to U+FFFD: its BPE spelling says more
    return token.replace("</w>", "") if not text or "\ufffd" in text else text


@dataclass(frozen=True)
class NormRange:
    """The spread of the vocabulary's token-vector norms: where a learned vector's norm is at home."""

    min: float
    p5: float
    mean: float
    median: float
    p95: float
    max: float

    @classmethod
    def of(cls, table: torch.Tensor) -> "NormRange":
        norms = table.detach().float().norm(dim=1)
        p5, median, p95 = torch.quantile(norms.cpu(), torch.tensor([0.05, 0.5, 0.95])).tolist()
        return cls(norms.min().item(), p5, norms.mean().item(), median, p95, norms.max().item())
