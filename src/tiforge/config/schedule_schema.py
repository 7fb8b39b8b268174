"""Rules of the learning-rate schedule fields: AUTOMATIC1111's step-schedule strings, kohya's
warm-up fraction, and which schedule needs which argument. The schedules themselves are built in
`training.lr_schedules`."""

from __future__ import annotations

from typing import Any


def parse_step_schedule(text: str) -> list[tuple[float, int | None]]:
    """AUTOMATIC1111's "5e-3:100, 1e-3:1000, 1e-5" -> [(5e-3, 100), (1e-3, 1000), (1e-5, None)]: each
    rate until that many steps are done, the last one (no step, or step -1) to the end."""
    rules: list[tuple[float, int | None]] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"lr_step_schedule: {text!r} is empty; write it as rate:until_step, ..., last_rate")
    for i, part in enumerate(parts):
        rate_text, sep, step_text = part.partition(":")
        try:
            rate = float(rate_text)
            step = int(step_text) if sep else None
        except ValueError:
            raise ValueError(f"lr_step_schedule: {part!r} in {text!r} is not rate:step (e.g. 5e-3:100) or a "
                             "rate") from None
        if step == -1:
            step = None
        if rate <= 0 or (step is not None and step <= 0):
            raise ValueError(f"lr_step_schedule: {part!r}: rates and steps must be positive")
        if rules and rules[-1][1] is None:
            raise ValueError(f"lr_step_schedule: {text!r}: only the last rate may go without a step")
        if step is not None and rules and step <= rules[-1][1]:
            raise ValueError(f"lr_step_schedule: {text!r}: the steps must increase ({rules[-1][1]} then {step})")
        rules.append((rate, step))
        if step is None and i < len(parts) - 1:
            raise ValueError(f"lr_step_schedule: {text!r}: only the last rate may go without a step")
    return rules


def rate_at(rules: list[tuple[float, int | None]], steps_done: int) -> float:
    """The rate of the update after `steps_done` updates (the last rate once the schedule runs out)."""
    for rate, until in rules:
        if until is None or steps_done < until:
            return rate
    return rules[-1][0]


def step_schedule_in_learning_rate(data: Any) -> Any:
    """An A1111 schedule written as the learning rate (as its Train tab takes it) becomes
    lr_step_schedule, with its first rate as the learning rate."""
    if not isinstance(data, dict) or not isinstance(data.get("optimizer"), dict):
        return data
    rate = data["optimizer"].get("learning_rate")
    if not isinstance(rate, str) or not any(c in rate for c in ":,"):
        return data
    try:
        first = parse_step_schedule(rate)[0][0]
    except ValueError:
        return data  # learning_rate's own message says what is wrong with it
    return {**data, "lr_step_schedule": rate, "optimizer": {**data["optimizer"], "learning_rate": first}}


def schedule_problems(config) -> list[str]:
    problems: list[str] = []
    warmup = config.lr_warmup_steps
    if warmup >= 1 and warmup != int(warmup):
        problems.append(f"lr_warmup_steps: {warmup} is neither a whole number of steps nor a fraction below 1")
    name, args = config.lr_scheduler, config.lr_scheduler_args or {}
    chosen = [n for n, on in (("lr_scheduler", "lr_scheduler" in config.model_fields_set and name != "constant"),
                              ("lr_scheduler_type", config.lr_scheduler_type is not None),
                              ("lr_step_schedule", config.lr_step_schedule is not None)) if on]
    if len(chosen) > 1:
        problems.append(f"{' / '.join(chosen)}: each sets the schedule; set only one")
    no_warmup = [n for n in ("lr_scheduler_type", "lr_step_schedule") if getattr(config, n) is not None]
    if no_warmup and warmup:
        problems.append(f"lr_warmup_steps: {no_warmup[0]} has no warm-up (as in kohya); set lr_warmup_steps to 0")
    if config.lr_step_schedule is not None:
        try:
            parse_step_schedule(config.lr_step_schedule)
        except ValueError as err:
            problems.append(str(err))
    if name == "adafactor" and config.optimizer.optimizer_type != "AdaFactor":
        problems.append("lr_scheduler: adafactor only reports the rate the AdaFactor optimizer chooses; use it with "
                        "optimizer_type AdaFactor, or choose another schedule")
    if name == "cosine_with_min_lr" and config.lr_scheduler_min_lr_ratio is None and not {"min_lr", "min_lr_rate"} & set(args):
        problems.append("lr_scheduler: cosine_with_min_lr needs the lowest rate: set lr_scheduler_min_lr_ratio "
                        "(e.g. 0.1) or lr_scheduler_args min_lr")
    if name == "piecewise_constant" and "step_rules" not in args:
        problems.append("lr_scheduler: piecewise_constant needs lr_scheduler_args step_rules, e.g. "
                        "step_rules='1:100,0.1:200,0.01' (multipliers until each step)")
    if config.lr_scheduler_type is not None and "." not in config.lr_scheduler_type:
        import torch

        if not isinstance(getattr(torch.optim.lr_scheduler, config.lr_scheduler_type, None), type):
            problems.append(f"lr_scheduler_type: {config.lr_scheduler_type!r} is not a class of "
                            "torch.optim.lr_scheduler; give one of those (e.g. StepLR) or module.Class")
    return problems
