"""The `optimizer:` section of the config.

invoke-training's YAML union (AdamW, Prodigy) is kept as it is; every other optimizer kohya-ss
sd-scripts knows by name (Lion, D-Adaptation, Adafactor, schedule-free AdamW, ...) or any importable
`module.Class` is tiforge's addition, as `NamedOptimizerConfig`. Extra keyword arguments for the
optimizer's class go in `optimizer_args` (kohya's `--optimizer_args key=value ...`).
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from tiforge.config.data_schema import StrictModel

# Far above any useful rate (textual inversion uses about 1e-4..1e-1, Prodigy about 1); beyond it an
# update step overflows float32 and training cannot even take its first step.
MAX_LEARNING_RATE = 1e3

# kohya's optimizer names (it compares them case-insensitively) -> the package that implements them
# (None: PyTorch or transformers, always installed).
KOHYA_OPTIMIZERS: dict[str, str | None] = {
    "AdamW": None, "SGDNesterov": None, "AdaFactor": None,
    "AdamW8bit": "bitsandbytes", "PagedAdamW": "bitsandbytes", "PagedAdamW8bit": "bitsandbytes",
    "PagedAdamW32bit": "bitsandbytes", "SGDNesterov8bit": "bitsandbytes",
    "Lion8bit": "bitsandbytes", "PagedLion8bit": "bitsandbytes",
    "Lion": "lion-pytorch",
    "DAdaptation": "dadaptation", "DAdaptAdamPreprint": "dadaptation", "DAdaptAdaGrad": "dadaptation",
    "DAdaptAdam": "dadaptation", "DAdaptAdan": "dadaptation", "DAdaptAdanIP": "dadaptation",
    "DAdaptLion": "dadaptation", "DAdaptSGD": "dadaptation",
    "Prodigy": "prodigyopt",
    "AdamWScheduleFree": "schedulefree", "RAdamScheduleFree": "schedulefree", "SGDScheduleFree": "schedulefree",
}
_CANONICAL = {name.lower(): name for name in KOHYA_OPTIMIZERS}


def canonical_optimizer_name(name: str) -> str:
    """kohya's spelling of a known name given in any case (`adamw8bit` -> `AdamW8bit`); other names as given."""
    return _CANONICAL.get(name.lower(), name)


def is_adaptive(name: str) -> bool:
    """D-Adaptation and Prodigy estimate the step size themselves; their learning rate is a multiplier (~1)."""
    return name.startswith("DAdapt") or name == "Prodigy"


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """kohya's `key=value` arguments, each value a Python literal (`betas=0.9,0.99` is a tuple)."""
    out: dict[str, Any] = {}
    for item in (part for text in items for part in str(text).split()):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{flag}: {item!r} is not key=value (e.g. --{flag} weight_decay=0.01 betas=0.9,0.99)")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            if raw.replace("_", "").isalnum() and not raw[:1].isdigit():
                out[key] = raw  # a bare word (kohya would want it quoted: key='word')
            else:
                raise ValueError(f"--{flag}: {item!r}: {raw!r} is not a Python literal (a number, True/False, "
                                 "a tuple such as 0.9,0.99, or a quoted string)") from None
    return out


class _OptimizerArgs(StrictModel):
    # None rather than {}: a checkpoint written before this field existed still resumes (its config lacks it)
    optimizer_args: dict[str, Any] | None = None
    """Further keyword arguments of the optimizer's class (kohya's --optimizer_args); they win over
    the named fields."""

    @field_validator("optimizer_args", mode="before")
    @classmethod
    def _key_values(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple, str)):  # kohya's ["key=value", ...] as text
            return parse_key_values([value] if isinstance(value, str) else list(value), "optimizer_args")
        return value


class AdamWOptimizerConfig(_OptimizerArgs):
    # AdamW8bit (kohya's name) uses bitsandbytes on a CUDA GPU, and plain AdamW elsewhere.
    optimizer_type: Literal["AdamW", "AdamW8bit"] = "AdamW"
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)
    weight_decay: float = Field(1e-2, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    epsilon: float = Field(1e-8, gt=0)


class ProdigyOptimizerConfig(_OptimizerArgs):
    optimizer_type: Literal["Prodigy"]
    learning_rate: float = Field(1.0, gt=0, le=MAX_LEARNING_RATE)
    weight_decay: float = Field(0.0, ge=0)
    use_bias_correction: bool = False
    safeguard_warmup: bool = False


class NamedOptimizerConfig(_OptimizerArgs):
    """An optimizer by kohya's name (Lion, DAdaptAdam, AdaFactor, AdamWScheduleFree, ...), a class of
    torch.optim (`RAdam`), or any importable `module.Class`."""

    optimizer_type: str
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)
    weight_decay: float | None = Field(None, ge=0)
    """Passed to the optimizer only when set (each class has its own default)."""

    @model_validator(mode="before")
    @classmethod
    def _adaptive_rate_is_one(cls, value: Any) -> Any:
        if isinstance(value, dict) and "learning_rate" not in value and is_adaptive(
                canonical_optimizer_name(str(value.get("optimizer_type", "")))):
            return {**value, "learning_rate": 1.0}
        return value

    @field_validator("optimizer_type")
    @classmethod
    def _known_or_importable_name(cls, name: str) -> str:
        name = canonical_optimizer_name(name.strip())
        if name in KOHYA_OPTIMIZERS or "." in name:
            return name
        import torch

        if isinstance(getattr(torch.optim, name, None), type):
            return name
        import difflib

        close = difflib.get_close_matches(name, [*KOHYA_OPTIMIZERS, "Prodigy"], n=1, cutoff=0.6)
        raise ValueError(
            f"unknown optimizer {name!r}" + (f" (did you mean {close[0]}?)" if close else "") +
            f"; use one of {', '.join(KOHYA_OPTIMIZERS)}, a class of torch.optim, or module.Class")


def _optimizer_tag(value: Any) -> str:
    name = value.get("optimizer_type", "AdamW") if isinstance(value, dict) else getattr(value, "optimizer_type", "")
    name = canonical_optimizer_name(str(name))
    return {"AdamW": "AdamW", "AdamW8bit": "AdamW", "Prodigy": "Prodigy"}.get(name, "Named")


# Tags start with a capital: error paths drop them (config.loading), so users see `optimizer.learning_rate`.
OptimizerConfig = Annotated[
    Union[Annotated[AdamWOptimizerConfig, Tag("AdamW")], Annotated[ProdigyOptimizerConfig, Tag("Prodigy")],
          Annotated[NamedOptimizerConfig, Tag("Named")]],
    Discriminator(_optimizer_tag),
]
