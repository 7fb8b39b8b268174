"""Settings that only work on some machines, fitted to this one before anything loads."""

from __future__ import annotations

import importlib.util
import logging

from tiforge.config.schema import ConfigError, TrainingConfig
from tiforge.training.precision import cpu_autocast_dtypes

log = logging.getLogger("tiforge")


def fit_to_machine(config: TrainingConfig, cuda: bool) -> TrainingConfig:
    """GPU-only settings on a machine without CUDA: say so and use what works here."""
    # float16 weights and fp16 mixed precision run on a CPU too; see precision.py for what does not
    changes = {} if cuda else cpu_autocast_dtypes(config)
    if config.xformers and not cuda:
        log.warning("xformers needs a CUDA GPU; using PyTorch's scaled-dot-product attention on this machine")
        changes["xformers"] = False
    if config.xformers and cuda and importlib.util.find_spec("xformers") is None:
        raise ConfigError("xformers: the xformers package is not installed (pip install xformers), or set "
                          "xformers: false to use PyTorch's scaled-dot-product attention")
    return config.model_copy(update=changes) if changes else config
