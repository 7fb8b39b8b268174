"""Mixed precision: what runs where, and one optimizer update that is safe with a gradient scaler.

What torch 2.13 runs on a CPU (measured, see tests/test_precision.py): matmul, conv, group norm,
layer norm and scaled-dot-product attention in float16 and bfloat16, `torch.autocast("cpu")` in
both, and `torch.amp.GradScaler("cpu")`. So every weight dtype and every mixed precision trains
on a CPU as it does on a GPU, except bf16 weights under fp16 autocast and the reverse (see
`cpu_autocast_dtypes`); xformers needs CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from tiforge.config.schema import WEIGHT_DTYPE_OF_MIXED_PRECISION

log = logging.getLogger("tiforge")


HALF = ("float16", "bfloat16")


def cpu_autocast_dtypes(config) -> dict[str, str]:
    """The one CPU limit: under autocast, torch's CPU layer/group norm refuse weights in the *other*
    half dtype (bf16 weights under fp16 autocast, or the reverse); on a GPU autocast runs norms in
    float32 and the pair works. Such frozen weights (and VAE) take the autocast dtype here."""
    target = WEIGHT_DTYPE_OF_MIXED_PRECISION.get(config.mixed_precision) if config.mixed_precision in ("fp16", "bf16") \
        else None
    changes = {}
    for field in ("weight_dtype", "vae_dtype"):
        current = getattr(config, field, None)
        if target and current in HALF and current != target:
            log.warning("%s %s under mixed_precision %s does not run on a CPU (its norms refuse mixed half "
                        "dtypes); using %s on this machine", field, current, config.mixed_precision, target)
            changes[field] = target
    return changes


def fp16_autocast_on_cpu(accelerator) -> None:
    """accelerate turns `mixed_precision="fp16"` into plain float32 on a CPU (no autocast, no scaler),
    although torch runs both there. Give the CPU what a GPU gets, so fp16 training means the same
    everywhere and its scaler path runs in the test suite."""
    if accelerator.mixed_precision != "fp16" or accelerator.device.type != "cpu" or accelerator.scaler is not None:
        return
    accelerator.native_amp = True  # accelerate's own switch for autocast and for unscaling
    accelerator.scaler = torch.amp.GradScaler("cpu")
    log.info("mixed_precision fp16 on the CPU: float16 autocast with a gradient scaler")


@dataclass(frozen=True)
class UpdateOutcome:
    finite: bool  # False: the update was not applied (NaN/inf gradients, a step the scaler skipped, or an overflow)
    grad_norm: torch.Tensor  # of the unscaled gradients, before clipping


def guarded_update(
    params: list[torch.nn.Parameter],
    *,
    max_grad_norm: float | None,
    scaler=None,
    unscale: Callable[[], None] = lambda: None,
    step: Callable[[], None],
    step_was_skipped: Callable[[], bool] = lambda: False,
) -> UpdateOutcome:
    """One optimizer update at the end of an accumulation window.

    With a gradient scaler (fp16), the gradients are unscaled first, so that `max_grad_norm` and the
    logged norm are in true units, and `step` always runs: the scaler must see an overflowing step to
    lower its scale, and skips it itself. Without one, a non-finite gradient skips the step here. Either
    way a skipped step comes back as not finite, and an update that made a vector non-finite is undone.
    """
    if scaler is not None:
        unscale()
    grad_norm = torch.stack([p.grad.float().norm() for p in params if p.grad is not None]).norm()
    finite = bool(torch.isfinite(grad_norm))
    if finite and max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not finite and scaler is None:
        return UpdateOutcome(False, grad_norm)
    before = [p.detach().clone() for p in params]
    step()
    if not finite or step_was_skipped():
        return UpdateOutcome(False, grad_norm)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        for p, b in zip(params, before):
            p.data.copy_(b)  # an update that overflowed: undo it
        return UpdateOutcome(False, grad_norm)
    return UpdateOutcome(True, grad_norm)
