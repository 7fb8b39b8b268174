"""Trainings started from the browser: one at a time, the others queued. Each is the command a user
would run, `python -m tiforge.cli train CONFIG.yaml --json`, in its own process; a reader thread turns
its JSON lines into the job's state and passes them on. Stop is Ctrl-C (SIGINT: the run saves a
checkpoint and its embedding), resume is a new job with `resume_from_checkpoint`."""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from tiforge.atomic import atomic_write_text

LOG_LINES = 200
STOPPED_BY_SIGINT = 128 + signal.SIGINT


@dataclass
class Job:
    id: str
    config: dict
    config_path: Path
    state: str = "queued"  # queued -> running -> stopping -> stopped | finished | failed
    run_dir: str | None = None
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    lr: float | None = None
    history: list = field(default_factory=list)
    log_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    grid: str | None = None
    embedding: str | None = None
    checkpoint: str | None = None
    error: str | None = None
    resumed_from: str | None = None
    process: subprocess.Popen | None = None
    step_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "failed") and self.checkpoint is not None

    def speed(self) -> tuple[float | None, float | None]:
        """(steps per second over the last steps, seconds left), by the wall clock: saving and
        validating count too."""
        if len(self.step_times) < 2:
            return None, None
        (s0, t0), (s1, t1) = self.step_times[0], self.step_times[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 else None
        left = (self.max_steps - self.step) / rate if rate and self.max_steps else None
        return rate, left


class JobManager:
    def __init__(self, root: Path, publish: Callable[[dict], None]):
        self.root, self.publish = root, publish
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.folder = root / ".tiforge-web" / "jobs"
        self.train_command = lambda config_path: [sys.executable, "-m", "tiforge.cli", "train", str(config_path), "--json"]

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, config: dict, resumed_from: str | None = None, history: list | None = None) -> Job:
        with self._lock:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}"
            path = atomic_write_text(self.folder / f"{job_id}.yaml", yaml.safe_dump(config, sort_keys=False))
            job = Job(job_id, config, Path(path), resumed_from=resumed_from, history=list(history or []))
            self.jobs[job_id] = job
            self._announce(job)
            self._start_next()
            return job

    def _running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ("running", "stopping")), None)

    def _start_next(self) -> None:
        with self._lock:
            while self._running() is None:
                job = next((j for j in self.jobs.values() if j.state == "queued"), None)
                if job is None:
                    return
                self._launch(job)  # one that cannot even start is failed; then the next

    def _launch(self, job: Job) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            # Its own session: a Ctrl-C in the server's terminal reaches the run once, through shutdown()
            # (a second SIGINT would interrupt the run's saving).
            job.process = subprocess.Popen(
                self.train_command(job.config_path), cwd=self.root, env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        except OSError as err:
            job.state, job.error = "failed", f"could not start the training: {err}"
            self._announce(job)
            return
        job.state = "running"
        self._announce(job)
        threading.Thread(target=self._read_log, args=(job,), daemon=True).start()
        threading.Thread(target=self._read_events, args=(job,), daemon=True).start()

    # -- stop and resume ------------------------------------------------------------------------

    def stop(self, job: Job) -> Job:
        with self._lock:
            if job.state == "queued":
                job.state = "stopped"
            elif job.state == "running" and job.process is not None:
                job.state = "stopping"
                job.process.send_signal(signal.SIGINT)  # the run saves a checkpoint and its embedding
            self._announce(job)
            return job

    def resume(self, job: Job) -> Job:
        """A new job continuing the stopped one from its last checkpoint, in the same run folder."""
        config = {**job.config, "resume_from_checkpoint": job.checkpoint}
        saved_at = checkpoint_step(job.checkpoint)
        # the plot goes on from the stopped run's curve (up to the step its checkpoint holds)
        curve = [row for row in job.history if saved_at is None or row[0] <= saved_at]
        return self.submit(config, resumed_from=job.id, history=curve)

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Server exit: the running training saves and stops, as on Ctrl-C; queued ones are dropped."""
        with self._lock:
            for job in self.jobs.values():
                if job.state == "queued":
                    job.state = "stopped"
            running = self._running()
            if running is not None and running.state == "running":
                self.stop(running)
        if running is not None and running.process is not None:
            try:
                running.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                running.process.kill()

    # -- reading the run ------------------------------------------------------------------------

    def _read_log(self, job: Job) -> None:
        for line in job.process.stderr:
            line = line.rstrip("\n")
            if line:
                job.log_tail.append(line)
                self.publish({"job": job.id, "event": "log", "line": line})

    def _read_events(self, job: Job) -> None:
        for line in job.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                job.log_tail.append(line.rstrip("\n"))
                continue
            if isinstance(event, dict):
                event = absolute_paths(event, self.root)
                hear(job, event)
                self.publish({"job": job.id, **event})
        self._finished(job, job.process.wait())

    def _finished(self, job: Job, code: int) -> None:
        with self._lock:
            if code == 0:
                job.state = "finished"
            elif code in (STOPPED_BY_SIGINT, -signal.SIGINT) and job.state == "stopping":  # (-: before its handler)
                job.state = "stopped"
                job.error = None  # the run's "stopped: resume with ..." message is in the log, not an error
            else:
                job.state = "failed"
                job.error = job.error or (job.log_tail[-1] if job.log_tail else f"exit code {code}")
            self._announce(job)
            self._start_next()

    def _announce(self, job: Job) -> None:
        self.publish({"job": job.id, "event": "state", "state": job.state})


def checkpoint_step(path: str | None) -> int | None:
    """`.../checkpoint-step_00000087` (or the diffusers layout's `checkpoint-87`) -> 87."""
    found = re.search(r"checkpoint-(?:step_)?0*(\d+)$", str(path or "").rstrip("/"))
    return int(found.group(1)) if found else None


def thinned(rows: list, most: int = 2000) -> list:
    """At most about `most` points of a long curve, the last one always kept."""
    if len(rows) <= most:
        return list(rows)
    every = -(-len(rows) // most)
    return rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else [])


def absolute_paths(event: dict, root: Path) -> dict:
    """The run prints paths relative to its working folder, the web root."""
    return {k: str(root / v) if k in ("run_dir", "path", "embedding") and isinstance(v, str) and v else v
            for k, v in event.items()}


def hear(job: Job, event: dict) -> None:
    """One `--json` event into the job's state."""
    kind = event.get("event")
    if kind == "start":
        job.run_dir, job.step, job.max_steps = event["run_dir"], event["step"], event["max_steps"]
    elif kind == "step":
        job.step, job.max_steps, job.loss, job.lr = event["step"], event["max_steps"], event["loss"], event["lr"]
        job.history.append([event["step"], event["loss"], event["lr"]])
        job.step_times.append((event["step"], time.monotonic()))
    elif kind == "checkpoint":
        job.checkpoint = event["path"]
    elif kind == "validation" and (Path(event["path"]) / "grid.png").is_file():
        job.grid = str(Path(event["path"]) / "grid.png")
    elif kind in ("embedding", "done"):
        job.embedding = event.get("path") or event.get("embedding")
    elif kind == "warning":
        job.log_tail.append(f"WARNING {event['message']}")
    elif kind == "error":
        job.error = event["message"]


def summary(job: Job, url_of: Callable[[str | None], str | None]) -> dict:
    """The job as the API shows it; `url_of` turns a file path into its download address (or None)."""
    rate, left = job.speed()
    return {
        "id": job.id, "state": job.state, "run_dir": job.run_dir, "step": job.step, "max_steps": job.max_steps,
        "loss": job.loss, "lr": job.lr, "steps_per_s": rate, "eta_s": left, "history": thinned(job.history),
        "grid": url_of(job.grid), "log_tail": list(job.log_tail)[-50:], "embedding": job.embedding,
        "embedding_url": url_of(job.embedding), "resumable": job.resumable, "error": job.error,
        "resumed_from": job.resumed_from,
    }
