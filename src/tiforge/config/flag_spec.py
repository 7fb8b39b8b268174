"""What a command-line flag is: the config field it sets (or the function that sets several), how
its value is read, and its one line of help. The tables of flags live beside it, one module per tool
the names come from (`tiforge.config.peer_flags`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Overrides = dict[str, Any]  # dotted config path -> value


@dataclass(frozen=True)
class Flag:
    path: str | None  # dotted config path; None when `apply` does the work
    kind: str = "value"  # "value", "bool" (a bare flag means true), "list" (repeatable), "multi" (values up to the next flag)
    apply: Callable[[Any, Overrides], None] | None = None
    note: str | None = None  # said once when the flag is used
    help: str = ""  # one line in `tiforge train --help`


def set_to(path: str, value: Any) -> Callable[[Any, Overrides], None]:
    """An `apply` that sets `path` to a fixed value whatever the flag's own value."""

    def apply(_: Any, out: Overrides) -> None:
        out[path] = value

    return apply


def ignored(_: Any, __: Overrides) -> None:
    """An `apply` for a flag accepted for compatibility that changes nothing (its note says why)."""
