"""How the frozen UNet runs fast: torch.compile where it pays (with a clean fall-back to eager), and
a check that attention goes through PyTorch's scaled-dot-product attention.

The training step calls the UNet through `UNetRunner`; validation and sample pictures keep calling
the eager module, so a compiled graph is never rebuilt for the sampler's shapes or no-grad mode.
"""

from __future__ import annotations

import logging
import sys

import torch

from tiforge.hardware import fast_half_convolutions

log = logging.getLogger("tiforge")

# Per device type: (seconds compiling takes, seconds it saves per training step), measured on the full
# model. Issue 19, on the 2-core CPU shared with other jobs: compiling even the *tiny* test UNet's
# forward and backward took 668 s (saving 0.034 of its 0.099 s/step); the full SD 1.5 UNet's compile
# did not finish within the time measured, and no GPU has been measured. Where nothing is measured,
# `auto` stays eager.
MEASURED_COMPILE: dict[str, tuple[float, float]] = {}


def compile_wanted(setting: bool | str, device_type: str, max_steps: int) -> bool:
    """`torch_compile: auto` compiles only where the measured gain over the run's steps exceeds the
    compile time; true and false are the user's word. The rule reads the run's total steps, not the
    steps left, so that a resumed run decides as the first part did (its numbers stay identical)."""
    if setting != "auto":
        return bool(setting)
    if device_type not in MEASURED_COMPILE:
        return False
    compile_seconds, saved_per_step = MEASURED_COMPILE[device_type]
    return saved_per_step * max_steps > compile_seconds


def unet_runner(config, parts, device_type: str, max_steps: int) -> "UNetRunner":
    """The UNet as the training step calls it, with the choices made said in the log."""
    check_attention(parts)
    wanted = compile_wanted(config.torch_compile, device_type, max_steps)
    if config.torch_compile == "auto":
        log.info("torch_compile auto: %s on %s for %d steps (compiling pays only where the time it saves over the "
                 "run's steps exceeds the compile time)", "compiling" if wanted else "not compiling", device_type,
                 max_steps)
    elif wanted and device_type == "cpu":
        log.warning("torch_compile on a CPU: compiling the UNet's forward and backward takes many minutes before the "
                    "first step (11 minutes for the tiny test UNet on 2 cores); it pays only over long runs")
    return UNetRunner(parts.unet, wanted)


class UNetRunner:
    """Calls the compiled UNet; if the compiler fails (on the first call, or later on a new shape),
    warns once and runs the eager UNet from then on, so the run finishes either way."""

    def __init__(self, unet, compiled: bool):
        self.unet = unet
        self.compiled = torch.compile(unet) if compiled else None

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            import torch._functorch.config

            try:
                # The backward graph is compiled with the forward one, so that its failures surface
                # here too and not half-way through a backward pass.
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    return self.compiled(*args, **kwargs)
            except Exception as err:  # the compiler's errors have no common base class
                log.warning("torch.compile failed (%s: %s); training on with the uncompiled UNet",
                            type(err).__name__, str(err).strip().splitlines()[0][:300] if str(err).strip() else "")
                self.compiled = None
                if "torch._dynamo" in sys.modules:  # drop what the failed compile cached
                    sys.modules["torch._dynamo"].reset()
        return self.unet(*args, **kwargs)


def channels_last_pays(dtype: torch.dtype, device_type: str) -> bool:
    """Measured (issue 19, a 320-channel 3x3 conv of SD's UNet at 256 px, fwd+bwd, on a shared 2-core
    AMD EPYC that torch 2.13 runs at AVX2, without native bf16): in bfloat16 and float16 torch's CPU
    convolutions are 3-4x faster in channels-last (NHWC) than in the default layout (13.4 s -> 4.4 s
    bf16, 21 s -> 5.3 s fp16), the tiny test UNet's whole bf16 training step 14% faster; in float32 no
    faster (0.19 s -> 0.25 s). GPUs have not been measured here, so they keep the default layout."""
    return device_type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def use_channels_last(unet, device_type: str) -> bool:
    """Puts the UNet's convolution weights in channels-last where that pays; its convolutions then
    give channels-last outputs, whatever the layout of the latents fed to it. Values are unchanged."""
    if not channels_last_pays(unet.dtype, device_type):
        return False
    unet.to(memory_format=torch.channels_last)
    log.info("UNet in channels-last memory layout (%s on %s: faster convolutions)", str(unet.dtype).split(".")[-1],
             device_type)
    return True


def warn_emulated_half_precision(config, device_type: str) -> None:
    """Without those kernels PyTorch runs its reference convolutions in bf16/fp16: on an AVX2-only
    CPU (measured, issue 19) a bf16 step of the tiny UNet is ~10x and a bf16 VAE encode ~40x slower
    than float32, so a user who picked half precision "for speed" gets the opposite. Say so once."""
    if device_type != "cpu":
        return
    kinds = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    picked = {"weight_dtype": config.weight_dtype, "mixed_precision": config.mixed_precision}
    slow = {field: value for field, value in picked.items()
            if value in kinds and not fast_half_convolutions(kinds[value])}
    if slow:
        log.warning("%s: this CPU has no native %s convolution kernels, so PyTorch emulates them (about 10-40x "
                    "slower than float32 here); on this machine weight_dtype float32 and mixed_precision no train "
                    "faster (half precision still halves the weights' memory)",
                    " and ".join(f"{field} {value}" for field, value in slow.items()),
                    "/".join(sorted({str(kinds[v]).split(".")[1] for v in slow.values()})))


def check_attention(parts) -> None:
    """Every attention of the UNet and the text encoders should run torch's fused
    scaled_dot_product_attention; say so when one does not (a custom processor, xformers)."""
    unet_kinds = sorted({type(p).__name__ for p in parts.unet.attn_processors.values()})
    encoder_kinds = sorted({str(getattr(enc.config, "_attn_implementation", None)) for _, _, enc in parts.text_encoders})
    fused = set(unet_kinds) <= {"AttnProcessor2_0", "XFormersAttnProcessor"} and encoder_kinds == ["sdpa"]
    (log.info if fused else log.warning)("attention: UNet %s, text encoder(s) %s%s", ", ".join(unet_kinds),
                                         ", ".join(encoder_kinds), "" if fused else " (not fused attention: slower)")
