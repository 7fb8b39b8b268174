"""What this machine's kernels can do fast, asked of PyTorch (used by latent caching and training)."""

from __future__ import annotations

import torch


def fast_half_convolutions(dtype: torch.dtype) -> bool:
    """Whether this CPU has oneDNN kernels for bf16/fp16 convolutions (AVX512-BF16, AMX, AVX-FP16)."""
    check = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
             torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    return bool(check and check())
