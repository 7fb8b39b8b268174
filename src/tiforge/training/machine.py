"""Settings that only work on some machines, fitted to this one before anything loads."""

from __future__ import annotations

import importlib.util
import logging

from tiforge.config.schema import ConfigError, TrainingConfig

log = logging.getLogger("tiforge")


def fit_to_machine(config: TrainingConfig, cuda: bool) -> TrainingConfig:
    """GPU-only settings on a machine without CUDA: say so and use what works here."""
    changes = {}
    if config.mixed_precision == "fp16" and not cuda:
        log.warning("mixed_precision fp16 needs a CUDA GPU; training in full precision on this machine")
        changes["mixed_precision"] = "no"
    if config.weight_dtype == "float16" and not cuda:
        log.warning("weight_dtype float16 is slow or unsupported without a CUDA GPU; using float32 on this machine")
        changes["weight_dtype"] = "float32"
    if getattr(config, "vae_dtype", None) == "float16" and not cuda:
        log.warning("vae_dtype float16 is slow or unsupported without a CUDA GPU; using float32 on this machine")
        changes["vae_dtype"] = "float32"
    if config.xformers and not cuda:
        log.warning("xformers needs a CUDA GPU; using PyTorch's scaled-dot-product attention on this machine")
        changes["xformers"] = False
    if config.xformers and cuda and importlib.util.find_spec("xformers") is None:
        raise ConfigError("xformers: the xformers package is not installed (pip install xformers), or set "
                          "xformers: false to use PyTorch's scaled-dot-product attention")
    return config.model_copy(update=changes) if changes else config
