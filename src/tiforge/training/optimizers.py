"""The optimizer and learning-rate schedule for the placeholder vectors."""

from __future__ import annotations

import logging

import torch

from tiforge.config.schema import ConfigError, TrainingConfig

log = logging.getLogger("tiforge")


def build_optimizer(config: TrainingConfig, params, lr: float):
    opt = config.optimizer
    if opt.optimizer_type == "AdamW8bit":
        try:
            import bitsandbytes

            if torch.cuda.is_available():
                return bitsandbytes.optim.AdamW8bit(params, lr=lr, betas=(opt.beta1, opt.beta2),
                                                    weight_decay=opt.weight_decay, eps=opt.epsilon)
        except ImportError:
            pass
        # The trainable vectors are a few KB: 8-bit optimizer state saves nothing worth a dependency.
        log.warning("AdamW8bit needs bitsandbytes and a CUDA GPU; using AdamW (the embedding's optimizer state "
                    "is tiny either way)")
    if opt.optimizer_type in ("AdamW", "AdamW8bit"):
        return torch.optim.AdamW(
            params, lr=lr, betas=(opt.beta1, opt.beta2), weight_decay=opt.weight_decay, eps=opt.epsilon
        )
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise ConfigError("optimizer.optimizer_type: Prodigy needs the prodigyopt package (pip install prodigyopt)") from None
    return Prodigy(
        params, lr=lr, weight_decay=opt.weight_decay,
        use_bias_correction=opt.use_bias_correction, safeguard_warmup=opt.safeguard_warmup,
    )


def build_lr_scheduler(config: TrainingConfig, optimizer, max_steps: int, num_processes: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        # accelerate steps a prepared scheduler once per process per update.
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )


def scaled_learning_rate(config: TrainingConfig, num_processes: int) -> float:
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * num_processes
    return lr
