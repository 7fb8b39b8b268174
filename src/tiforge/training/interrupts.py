"""Ctrl-C and SIGTERM during training: finish the current step, save, and stop cleanly."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path


class TrainingStopped(RuntimeError):
    """Training stopped early on purpose (a signal) or of necessity (non-finite values); what was
    learned so far is saved, and the message says where and how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """Records the first SIGINT/SIGTERM instead of dying at once; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def resume_command(checkpoint: Path | None, run_dir: Path) -> str:
    """The command that continues this very run: the config.yaml saved with the checkpoint is the
    run's resolved config (every flag and --set applied, seed and max_train_steps included)."""
    config = (checkpoint or run_dir) / "config.yaml"
    target = checkpoint or run_dir
    return f"tiforge train {shlex.quote(str(config))} --set resume_from_checkpoint={shlex.quote(str(target))}"
