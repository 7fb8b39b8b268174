"""kohya-ss sd-scripts' optimizer and schedule flags (merged into its table in kohya_scripts.py).

Its `--optimizer_type`, `--lr_scheduler_type`, `--lr_scheduler_min_lr_ratio` and `--learning_rate`
are tiforge's config fields of the same names."""

from __future__ import annotations

from typing import Any

from tiforge.config.flag_spec import Flag, Overrides
from tiforge.config.optimizer_schema import parse_key_values
from tiforge.config.schema import ConfigError


def _key_values(flag: str, path: str):
    def apply(values: Any, out: Overrides) -> None:
        try:
            out[path] = {**out.get(path, {}), **parse_key_values(list(values), flag)}
        except ValueError as err:
            raise ConfigError(str(err)) from None

    return apply


def _one_optimizer(name: str, flag: str):
    def apply(value: Any, out: Overrides) -> None:
        if not value:
            return
        if out.get("optimizer.optimizer_type") not in (None, name):
            raise ConfigError(f"--{flag}: --optimizer_type is also given; use only --optimizer_type "
                              f"(--{flag} means --optimizer_type={name})")
        out["optimizer.optimizer_type"] = name

    return apply


OPTIMIZER_FLAGS: dict[str, Flag] = {
    "optimizer_args": Flag(None, kind="multi", apply=_key_values("optimizer_args", "optimizer.optimizer_args"),
                           help="key=value ... keyword arguments of the optimizer (Python literals, betas=0.9,0.99)"),
    "lr_scheduler_args": Flag(None, kind="multi", apply=_key_values("lr_scheduler_args", "lr_scheduler_args"),
                              help="key=value ... keyword arguments of the schedule (= lr_scheduler_args)"),
    "lr_scheduler_num_cycles": Flag("lr_num_cycles", help="= lr_num_cycles (cosine_with_restarts, cosine_with_min_lr)"),
    "lr_scheduler_power": Flag("lr_power", help="= lr_power (polynomial)"),
    "use_8bit_adam": Flag(None, kind="bool", apply=_one_optimizer("AdamW8bit", "use_8bit_adam"),
                          help="= --optimizer_type=AdamW8bit"),
    "use_lion_optimizer": Flag(None, kind="bool", apply=_one_optimizer("Lion", "use_lion_optimizer"),
                               help="= --optimizer_type=Lion"),
}
