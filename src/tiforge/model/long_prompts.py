"""kohya's long prompts (`max_token_length` 150 or 225): a caption is tokenized to 75 x n tokens and
cut into n windows of CLIP's 77 places, each with its own start token and an end (or pad) token; the
text encoder reads each window on its own and the outputs are joined back into one sequence of
n x 75 + 2 states (the first window's start, every window's 75 inner states, the last window's end).

With n = 1 (75 or none) this is exactly the usual 77-token encoding.
"""

from __future__ import annotations

import torch

WINDOW = 77  # CLIP's positions: start token, 75 caption tokens, end token
INNER = WINDOW - 2


def num_windows(max_token_length: int | None) -> int:
    return 1 if max_token_length is None else max_token_length // INNER


def window_ids(tokenizer, texts: list[str], max_token_length: int | None) -> torch.Tensor:
    """[batch, n x 77] token ids, as kohya's tokenizer strategy builds them."""
    n = num_windows(max_token_length)
    if n == 1:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    ids = tokenizer(texts, padding="max_length", max_length=n * INNER + 2, truncation=True,
                    return_tensors="pt").input_ids
    pads_with_end = tokenizer.pad_token_id == tokenizer.eos_token_id  # SD 1.x; SD 2.x and clip_g pad with "!"
    windows = []
    for start in range(1, n * INNER + 1, INNER):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + INNER], ids[:, -1:]], dim=1)
        if not pads_with_end:
            # a window full of caption tokens still ends with the end token, and an empty window
            # (start, pad, pad, ...) reads as start, end, pad, ... - kohya's rules for "!" padding
            full = (chunk[:, -2] != tokenizer.eos_token_id) & (chunk[:, -2] != tokenizer.pad_token_id)
            chunk[full, -1] = tokenizer.eos_token_id
            empty = chunk[:, 1] == tokenizer.pad_token_id
            chunk[empty, 1] = tokenizer.eos_token_id
        windows.append(chunk)
    return torch.cat(windows, dim=1)


def join_windows(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch x n, 77, width] per-window states -> [batch, n x 75 + 2, width]."""
    n = hidden.shape[0] // batch
    if n == 1:
        return hidden
    per_item = hidden.reshape(batch, n * WINDOW, hidden.shape[-1])
    inner = [per_item[:, w * WINDOW + 1:(w + 1) * WINDOW - 1] for w in range(n)]
    return torch.cat([per_item[:, :1], *inner, per_item[:, -1:]], dim=1)


def first_window(pooled: torch.Tensor, batch: int) -> torch.Tensor:
    """SDXL's pooled text embedding comes from each caption's first window (as kohya does)."""
    return pooled.reshape(batch, -1, pooled.shape[-1])[:, 0]
