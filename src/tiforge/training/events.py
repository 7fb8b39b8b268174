"""What a training run tells the outside world, as one typed stream.

The recipe calls one listener with these events; the CLI's progress bar and `--json` output, the
console UI and any later front end are all listeners, so none of them reaches into the loop.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Literal, Union


@dataclass(frozen=True)
class Started:
    """The loop is about to run: where it starts and where it ends."""

    run_dir: str
    step: int
    max_steps: int


@dataclass(frozen=True)
class Step:
    """One optimizer step done."""

    step: int
    max_steps: int
    epoch: int
    loss: float
    lr: float
    seconds: float  # this step's own time: data, forward, backward, update; not saving or validating
    run_dir: str = ""


@dataclass(frozen=True)
class FileWritten:
    """A checkpoint folder, a validation folder or the embedding file, complete on disk."""

    kind: Literal["checkpoint", "validation", "embedding", "sample"]
    path: str


@dataclass(frozen=True)
class Warned:
    """A warning the run logged (also in train.log)."""

    message: str


@dataclass(frozen=True)
class Finished:
    run_dir: str
    embedding: str
    steps: int
    loss: float | None


Event = Union[Started, Step, FileWritten, Warned, Finished]
Listener = Callable[[Event], None]

_NAMES = {Started: "start", Step: "step", Warned: "warning", Finished: "done"}


def as_json(event: Event) -> dict:
    """The `--json` line of an event: {"event": name, ...fields}. A written file is named by its kind
    ({"event": "checkpoint", "path": ...}), as scripts have read it since the first release."""
    fields = dataclasses.asdict(event)
    if isinstance(event, FileWritten):
        return {"event": fields.pop("kind"), **fields}
    return {"event": _NAMES[type(event)], **fields}


def ignore(event: Event) -> None:
    """The listener of a run nobody watches."""


def on_steps(handler: Callable[[Step], None]) -> Listener:
    """A listener that hears only the steps."""
    return lambda event: handler(event) if isinstance(event, Step) else None


def fan_out(*listeners: Listener | None) -> Listener:
    """One listener that tells each of the given ones (None entries are left out)."""
    present = [each for each in listeners if each is not None]

    def tell(event: Event) -> None:
        for each in present:
            each(event)

    return tell


class WarningsToEvents(logging.Handler):
    """While a run lasts, its logged warnings also go to the listener, so front ends show them."""

    def __init__(self, listener: Listener):
        super().__init__(logging.WARNING)
        self.listener = listener

    def emit(self, record: logging.LogRecord) -> None:
        self.listener(Warned(record.getMessage()))
