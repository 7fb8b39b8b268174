"""What the terminal shows: library warnings under -q, and progress as plain lines where stderr is
not a terminal (a log file, CI, a notebook) - there, redrawn bars would leave carriage returns and
cursor-up codes in the text."""

from __future__ import annotations

import sys
import time
import warnings


def configure_output(quiet: bool) -> None:
    """-q: no Python warnings from the libraries either (FutureWarnings, DataLoader worker notices);
    tiforge's own warnings go through logging and still show."""
    if quiet:
        warnings.filterwarnings("ignore")  # data-loader workers are forked: they inherit this


def plain_progress_wanted(stream=None) -> bool:
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


class PlainProgress:
    """A step listener printing `training: step 120/1000 ...` lines: the first and last step, and
    otherwise at most one line every `interval` seconds."""

    def __init__(self, interval: float = 10.0, stream=None):
        self.interval = interval
        self.stream = stream or sys.stderr
        self.last: float | None = None

    def __call__(self, info) -> None:
        now = time.monotonic()
        if info.step not in (1, info.max_steps) and self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        print(f"training: step {info.step}/{info.max_steps}  epoch {info.epoch}  loss {info.loss:.4f}  "
              f"lr {info.lr:.2e}", file=self.stream, flush=True)
