"""The optimizer of the placeholder vectors: kohya-ss sd-scripts' optimizer names (with the packages
that implement them), any `module.Class`, and schedule-free optimizers' train/eval modes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from tiforge.config.optimizer_schema import is_adaptive
from tiforge.config.schema import ConfigError, TrainingConfig

log = logging.getLogger("tiforge")

# pip name -> module name, of the optional optimizer packages
_MODULE_OF_PACKAGE = {"bitsandbytes": "bitsandbytes", "lion-pytorch": "lion_pytorch", "dadaptation": "dadaptation",
                      "prodigyopt": "prodigyopt", "schedulefree": "schedulefree"}

# kohya's name -> (module, class); the 8-bit ones fall back to their 32-bit class (second entry)
_CLASSES: dict[str, tuple[str, str]] = {
    "AdamW": ("torch.optim", "AdamW"), "SGDNesterov": ("torch.optim", "SGD"),
    "AdaFactor": ("transformers.optimization", "Adafactor"), "Lion": ("lion_pytorch", "Lion"),
    "DAdaptation": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdamPreprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdanIP": ("dadaptation.experimental", "DAdaptAdanIP"),
    **{n: ("dadaptation", n) for n in ("DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptLion", "DAdaptSGD")},
    "Prodigy": ("prodigyopt", "Prodigy"),
    **{n: ("schedulefree", n) for n in ("AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree")},
}
_EIGHT_BIT: dict[str, tuple[str, str]] = {  # bitsandbytes class, and the 32-bit one without it
    "AdamW8bit": ("AdamW8bit", "AdamW"), "PagedAdamW8bit": ("PagedAdamW8bit", "AdamW"),
    "PagedAdamW32bit": ("PagedAdamW32bit", "AdamW"), "PagedAdamW": ("PagedAdamW", "AdamW"),
    "Lion8bit": ("Lion8bit", "Lion"), "PagedLion8bit": ("PagedLion8bit", "Lion"),
    "SGDNesterov8bit": ("SGD8bit", "SGDNesterov"),
}


@dataclass
class ResolvedOptimizer:
    cls: type
    kwargs: dict[str, Any]
    lr: float | None
    notes: list[str] = field(default_factory=list)  # logged when the optimizer is built


def _import_class(module: str, name: str, what: str) -> type:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        package = next((p for p, m in _MODULE_OF_PACKAGE.items() if module.split(".")[0] == m), module.split(".")[0])
        raise ConfigError(f"optimizer.optimizer_type: {what} needs the {package} package: pip install {package} "
                          "(or pip install 'tiforge[optimizers]' for all of them)") from None
    except AttributeError:
        raise ConfigError(f"optimizer.optimizer_type: {what}: {module} has no {name} (an older version of "
                          f"{module.split('.')[0]}? upgrade it)") from None


def _eight_bit(name: str, notes: list[str]) -> tuple[str, tuple[str, str]]:
    """bitsandbytes' class on a CUDA GPU; elsewhere (or without bitsandbytes) the 32-bit equivalent."""
    bnb_name, fallback = _EIGHT_BIT[name]
    if torch.cuda.is_available():
        try:
            importlib.import_module("bitsandbytes")
            return name, ("bitsandbytes.optim", bnb_name)
        except ImportError:
            why = "bitsandbytes is not installed (pip install bitsandbytes)"
    else:
        why = "there is no CUDA GPU"
    # The trainable vectors are a few KB: 8-bit optimizer state saves nothing worth a dependency.
    notes.append(f"{name} needs bitsandbytes and a CUDA GPU, and {why}; using {fallback} (the embedding's "
                 "optimizer state is tiny either way)")
    return fallback, _CLASSES[fallback]


def _named_kwargs(config: TrainingConfig) -> dict[str, Any]:
    """The optimizer's own fields as keyword arguments of its class (optimizer_args are added on top)."""
    opt = config.optimizer
    if opt.optimizer_type in ("AdamW", "AdamW8bit"):
        return {"betas": (opt.beta1, opt.beta2), "weight_decay": opt.weight_decay, "eps": opt.epsilon}
    if opt.optimizer_type == "Prodigy" and hasattr(opt, "use_bias_correction"):
        return {"weight_decay": opt.weight_decay, "use_bias_correction": opt.use_bias_correction,
                "safeguard_warmup": opt.safeguard_warmup}
    return {} if opt.weight_decay is None else {"weight_decay": opt.weight_decay}


def resolve_optimizer(config: TrainingConfig, lr: float) -> ResolvedOptimizer:
    """Which class, with which arguments. Importing it here makes a missing package a named error
    before any model is loaded."""
    name, notes = config.optimizer.optimizer_type, []
    kwargs = {**_named_kwargs(config), **(config.optimizer.optimizer_args or {})}
    used = name
    if name in _EIGHT_BIT:
        used, (module, cls_name) = _eight_bit(name, notes)
    elif name in _CLASSES:
        module, cls_name = _CLASSES[name]
    elif "." in name:
        module, _, cls_name = name.rpartition(".")
    else:
        module, cls_name = "torch.optim", name
    cls = _import_class(module, cls_name, name)
    if used in ("SGDNesterov", "SGDNesterov8bit"):
        kwargs = {"momentum": 0.9, **kwargs, "nesterov": True}  # kohya's default momentum
    if used == "AdaFactor":
        kwargs.setdefault("relative_step", True)  # kohya's default: Adafactor chooses its own rate
        if kwargs.get("warmup_init"):
            kwargs["relative_step"] = True
        if kwargs["relative_step"]:
            notes.append(f"AdaFactor with relative_step: it chooses its own learning rate ({lr:g} is only logged "
                         "before the first step)")
            lr = None
    if is_adaptive(name) and lr is not None and lr <= 0.1:
        notes.append(f"{name} adapts the step size itself; its learning rate is a multiplier, usually 1.0 "
                     f"(got {lr:g})")
    if name.endswith("ScheduleFree") and config.lr_warmup_steps and "warmup_steps" not in kwargs:
        if config.lr_scheduler == "constant":
            # "constant" has no warm-up (diffusers, transformers and kohya alike), and the diffusers
            # script's line brings lr_warmup_steps=500 unasked: a warm-up longer than many runs
            notes.append(f"{name} takes no warm-up from lr_warmup_steps ({config.lr_warmup_steps:g}) under the "
                         "constant lr_scheduler; for one, set lr_scheduler: constant_with_warmup or "
                         "optimizer_args warmup_steps=N")
        else:
            kwargs["warmup_steps"] = warmup_steps(config, None)
    return ResolvedOptimizer(cls, kwargs, lr, notes)


def warmup_steps(config: TrainingConfig, max_steps: int | None) -> int:
    """lr_warmup_steps in steps: kohya reads a value below 1 as a fraction of the training steps."""
    warmup = config.lr_warmup_steps
    if 0 < warmup < 1:
        if max_steps is None:
            max_steps = config.max_train_steps or 0
        return int(warmup * max_steps)
    return int(warmup)


def build_optimizer(config: TrainingConfig, params, lr: float):
    found = resolve_optimizer(config, lr)
    for note in found.notes:
        log.warning(note)
    accepted = _accepted_arguments(found.cls)
    unknown = sorted(set(found.kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"optimizer.optimizer_args: {found.cls.__module__}.{found.cls.__name__} takes no "
                          f"{', '.join(unknown)} (it takes {', '.join(sorted(accepted - {'params', 'lr'}))})")
    try:
        optimizer = found.cls(params, lr=found.lr, **found.kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer: {found.cls.__module__}.{found.cls.__name__} refused its arguments "
                          f"{found.kwargs}: {err}") from None
    log.info("optimizer: %s.%s%s", found.cls.__module__, found.cls.__name__,
             "".join(f" {k}={v}" for k, v in found.kwargs.items()))
    return optimizer


def _accepted_arguments(cls: type) -> set[str] | None:
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def scaled_learning_rate(config: TrainingConfig, num_processes: int) -> float:
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * num_processes
    return lr


# --------------------------------------------------------------- schedule-free optimizers' modes


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the optimizer


def is_schedule_free(optimizer) -> bool:
    """Schedule-free optimizers keep two points: the one gradients are taken at (train mode) and the
    average that is the result (eval mode)."""
    inner = _inner(optimizer)
    return bool(inner.param_groups) and "train_mode" in inner.param_groups[0] and hasattr(inner, "eval")


def enter_train_mode(optimizer) -> None:
    if is_schedule_free(optimizer) and not _inner(optimizer).param_groups[0]["train_mode"]:
        _inner(optimizer).train()


@contextlib.contextmanager
def averaged_weights(optimizer):
    """The vectors a schedule-free optimizer has learned (its average), for saving and validating;
    back to training mode afterwards. Other optimizers: nothing changes."""
    if optimizer is None or not is_schedule_free(optimizer) or not _inner(optimizer).param_groups[0]["train_mode"]:
        yield
        return
    _inner(optimizer).eval()
    try:
        yield
    finally:
        _inner(optimizer).train()


def with_averaged_weights(method):
    """Runs a Recipe method with the schedule-free average in place (see averaged_weights)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with averaged_weights(getattr(self, "optimizer", None)):
            return method(self, *args, **kwargs)

    return wrapper

