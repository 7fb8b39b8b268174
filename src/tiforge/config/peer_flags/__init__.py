"""The flag names users bring from other tools, one module per tool: what each flag sets, its help
line, the flags refused with what to do instead, and which names tell that a command line is that
tool's (so that its output layout and defaults apply).

A name two tools share (e.g. `--output_dir`) is defined once, in the first module that has it; the
order of `DIALECTS` is also the order in which a command line is recognised (kohya's names first:
its command lines also use the diffusers example's `--pretrained_model_name_or_path`).
"""

from __future__ import annotations

from tiforge.config.peer_flags import diffusers_example, invokeai_ti, kohya_scripts

DIALECTS = (kohya_scripts, invokeai_ti, diffusers_example)  # recognition order
HELP_ORDER = (diffusers_example, invokeai_ti, kohya_scripts)


def all_flags() -> dict:
    flags: dict = {}
    for tool in HELP_ORDER:
        for name, flag in tool.FLAGS.items():
            flags.setdefault(name, flag)
    return flags


def all_refused() -> dict[str, str]:
    return {name: why for tool in HELP_ORDER for name, why in tool.REFUSED.items()}


def tool_of_flag(name: str):
    """The module whose table defines `name`, or None for tiforge's own config fields."""
    return next((tool for tool in HELP_ORDER if name in tool.FLAGS), None)


def dialect_of(names: set[str]) -> str | None:
    """Which tool's command line this is ("kohya", "invokeai", "diffusers"), or None (tiforge's own)."""
    for tool in DIALECTS:
        if tool.recognises(names):
            return tool.NAME
    return None
