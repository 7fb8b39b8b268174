"""The learning-rate schedule: diffusers' six (and piecewise_constant), transformers'
cosine_with_min_lr and Adafactor's own rate, AUTOMATIC1111's step schedules, and any schedule class
by name. All are torch LR schedulers, so their position is saved in checkpoints and resumes exactly."""

from __future__ import annotations

import importlib
import logging

from torch.optim.lr_scheduler import LambdaLR

from tiforge.config.schedule_schema import parse_step_schedule, rate_at
from tiforge.config.schema import ConfigError, TrainingConfig
from tiforge.training.optimizers import is_schedule_free, warmup_steps

log = logging.getLogger("tiforge")


class StepRates:
    """AUTOMATIC1111's schedule as LambdaLR factors of the first rate. `per_update` scheduler steps
    make one optimizer update (accelerate steps a prepared scheduler once per process)."""

    def __init__(self, text: str, per_update: int = 1):
        self.rules = parse_step_schedule(text)
        self.per_update = per_update

    def __call__(self, scheduler_steps: int) -> float:
        return rate_at(self.rules, scheduler_steps // self.per_update) / self.rules[0][0]


def _is_adafactor_choosing_its_rate(optimizer) -> bool:
    group = optimizer.param_groups[0]
    return type(optimizer).__name__ == "Adafactor" and bool(group.get("relative_step"))


def _adafactor_rate(optimizer, initial_lr: float):
    """transformers' AdafactorSchedule (the rate Adafactor chose, for the log) in plain floats."""
    from transformers.optimization import AdafactorSchedule

    class AdafactorRate(AdafactorSchedule):
        def get_lr(self):
            return [float(lr) for lr in super().get_lr()]

    return AdafactorRate(optimizer, initial_lr=initial_lr)


def _by_class(config: TrainingConfig, optimizer):
    path = config.lr_scheduler_type
    module, _, name = path.rpartition(".") if "." in path else ("torch.optim.lr_scheduler", "", path)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"lr_scheduler_type: cannot import {path}: {err}") from None
    try:
        return cls(optimizer, **(config.lr_scheduler_args or {}))
    except TypeError as err:
        raise ConfigError(f"lr_scheduler_type: {path} refused lr_scheduler_args {config.lr_scheduler_args}: "
                          f"{err}") from None


def build_lr_scheduler(config: TrainingConfig, optimizer, max_steps: int, num_processes: int):
    """`num_processes`: accelerate steps a prepared scheduler once per process per update, so step
    counts are given in those steps."""
    name, args = config.lr_scheduler, dict(config.lr_scheduler_args or {})
    warmup, total = warmup_steps(config, max_steps) * num_processes, max_steps * num_processes
    if is_schedule_free(optimizer):
        if name != "constant" or config.lr_step_schedule or config.lr_scheduler_type:
            log.warning("%s needs no learning-rate schedule; the schedule is not used (its warm-up is the "
                        "optimizer's warmup_steps)", type(optimizer).__name__)
        return LambdaLR(optimizer, lambda _: 1.0)
    if config.lr_scheduler_type:
        return _by_class(config, optimizer)
    if config.lr_step_schedule:
        return LambdaLR(optimizer, StepRates(config.lr_step_schedule, num_processes))
    if _is_adafactor_choosing_its_rate(optimizer) or name == "adafactor":
        if name != "adafactor":
            log.info("lr_scheduler: AdaFactor chooses its own rate; the adafactor schedule logs it (as kohya does)")
        return _adafactor_rate(optimizer, config.learning_rate)
    if name == "cosine_with_min_lr":
        from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

        if config.lr_scheduler_min_lr_ratio is not None:
            args.setdefault("min_lr_rate", config.lr_scheduler_min_lr_ratio)
        # kohya counts a cycle as a half cosine wave (num_cycles 1: from the rate down to the minimum)
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total,
                                                           num_cycles=config.lr_num_cycles / 2, **args)
    from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    extra = {"constant": {}, "piecewise_constant": {}, "constant_with_warmup": {"num_warmup_steps": warmup},
             "linear": {"num_warmup_steps": warmup, "num_training_steps": total},
             "cosine": {"num_warmup_steps": warmup, "num_training_steps": total},
             "cosine_with_restarts": {"num_warmup_steps": warmup, "num_training_steps": total,
                                      "num_cycles": config.lr_num_cycles},
             "polynomial": {"num_warmup_steps": warmup, "num_training_steps": total, "power": config.lr_power}}[name]
    try:
        return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)](optimizer, **{**extra, **args})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"lr_scheduler_args: the {name} schedule refused {args}: {err}") from None
