"""One writer per run folder, and what a failed run leaves behind.

A run folder is locked while a run writes into it (an OS lock, so a crash or kill -9 releases it);
a second run resuming the same folder is refused and told which process holds it. When a run
fails, train.log gets the error; a new run that failed before its first step is removed whole,
since it holds nothing but its own log (the error is printed on stderr all the same).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from tiforge.training.run_folders import OutputError

log = logging.getLogger("tiforge")

LOCK_FILE = ".tiforge.lock"


class RunFolderBusy(OutputError):
    """Another process is writing into this run folder."""


class RunFolderLock:
    """An exclusive, non-blocking flock on `<run>/.tiforge.lock`, which says who holds it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.path.parent}: this run folder is in use by {holder}; wait for that run to end "
                    "(or stop it), then try again"
                ) from None
            # The holder before us may have removed the file between our open and our lock.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiting opener then retries on a new file
        os.close(self.fd)
        self.fd = None


class RunRecord:
    """What train() tells its caller about the run as it goes, for the clean-up after a failure."""

    def __init__(self):
        self.run_dir: Path | None = None
        self.new_run = False  # True when this run created the folder (not a resumption)
        self.steps = 0
        self.lock: RunFolderLock | None = None


def record_failure(record: RunRecord, err: BaseException) -> None:
    """Write the error into train.log; drop the folder of a new run that never took a step."""
    if record.run_dir is None or not record.run_dir.is_dir():
        return
    message = str(err) or type(err).__name__
    log_file = record.run_dir / "train.log"
    handlers = [h for h in logging.getLogger("tiforge").handlers
                if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_file.resolve()]
    for h in handlers:
        h.emit(logging.LogRecord("tiforge", logging.ERROR, __file__, 0, "%s", (message,), None))
        h.close()
        logging.getLogger("tiforge").removeHandler(h)
    if record.new_run and record.steps == 0 and _only_own_files(record.run_dir):
        shutil.rmtree(record.run_dir, ignore_errors=True)


def _only_own_files(run_dir: Path) -> bool:
    """Nothing but what a run writes before its first step: never delete a user's own files."""
    own = {"train.log", "config.yaml", "logs", LOCK_FILE}
    return all(p.name in own or p.name.startswith(".tiforge-write-test") for p in run_dir.iterdir())
