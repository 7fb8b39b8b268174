"""The run's report, gathered as the run goes: a listener on its events (steps to metrics.jsonl,
written files), and a refresh at each validation, at the end and at a stop that renders report.html.

Between refreshes it only appends one line per step, so training speed is untouched; a refresh
(plots, nearest tokens, pictures) costs well under a second on small runs and happens only then.
A report that cannot be written is a warning, never the end of a run.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

from tiforge.atomic import atomic_write_text
from tiforge.reporting import plots
from tiforge.reporting.data_summary import summarize
from tiforge.reporting.files import run_files
from tiforge.reporting.history import JsonLines
from tiforge.reporting.images import data_uri, file_uri
from tiforge.reporting.page import render
from tiforge.reporting.vectors import VectorWatch
from tiforge.training import events
from tiforge.training.start_checks import token_window

log = logging.getLogger("tiforge")

REPORT, METRICS, SNAPSHOTS = "report.html", "metrics.jsonl", "report_snapshots.jsonl"


class RunReport:
    """Reads the recipe's state (config, model, data, files) only when it refreshes."""

    def __init__(self, recipe):
        # Weak: the recipe holds the report, and a cycle would keep the finished run (its model, its
        # data loader's worker processes) alive until a garbage collection, or hang the exit on them.
        self.recipe = weakref.proxy(recipe)
        self.run_dir = Path(recipe.run_dir)
        self.on = bool(recipe.main)  # one process writes the report
        self.created = time.perf_counter()
        self.started: float | None = None
        self.resumed_at = 0
        self.step_seconds: list[float] = []
        self.metrics = JsonLines(self.run_dir / METRICS)
        self.snapshots = JsonLines(self.run_dir / SNAPSHOTS)
        self.written: dict[str, list[str]] = {}
        self.status = "running"
        self.watch: VectorWatch | None = None
        self.summary = None
        self.pictures: dict = {}  # data: URIs of validation pictures, by file (images.file_uri)
        self.refresh_seconds: float | None = None

    def hear(self, event: events.Event) -> None:
        if not self.on:
            return
        if isinstance(event, events.Started):
            self._start(event.step)
        elif isinstance(event, events.Step):
            self.step_seconds.append(event.seconds)
            self.metrics.append({"step": event.step, "loss": event.loss, "lr": event.lr, "seconds": event.seconds,
                                 "epoch": event.epoch, "norms": self.watch.norms() if self.watch else {}})
        elif isinstance(event, events.FileWritten):
            self.written.setdefault(event.kind, []).append(event.path)
        elif isinstance(event, events.Finished):
            self.status = "finished"
            self.refresh("end")

    def _start(self, step: int) -> None:
        self.started, self.resumed_at = time.perf_counter(), step
        self.metrics.start_at(step)
        self.snapshots.start_at(step)
        self.watch = VectorWatch(self.recipe.prompt_encoder, self.recipe.placeholders)
        self._snapshot("resumed" if step else "start", None)

    def refresh(self, moment: str, validation_dir: Path | None = None) -> None:
        """Render report.html now: after a validation (its folder), at the end, at a stop."""
        if not self.on:
            return
        began = time.perf_counter()
        try:
            if moment == "stopped":
                self.status = "stopped"
            self._snapshot(moment, validation_dir)
            atomic_write_text(self.run_dir / REPORT, render(self._context(moment)))
        except Exception as err:  # the report is a view of the run: never the reason it fails
            log.warning("report.html not refreshed (%s: %s); training goes on", type(err).__name__, err)
            return
        self.refresh_seconds = time.perf_counter() - began
        log.info("report refreshed in %.2f s: %s", self.refresh_seconds, self.run_dir / REPORT)

    def _snapshot(self, moment: str, validation_dir: Path | None) -> None:
        if self.watch is None:
            self.watch = VectorWatch(self.recipe.prompt_encoder, self.recipe.placeholders)
        row = {"step": self.recipe.global_step, "moment": moment, "nearest": self.watch.nearest(),
               "norms": self.watch.norms(),
               "validation": str(validation_dir.relative_to(self.run_dir)) if validation_dir else None}
        last = self.snapshots.rows[-1] if self.snapshots.rows else None
        if last is not None and last["step"] == row["step"]:
            # e.g. the end right after the final validation, or a resume where a stop was: one row per step
            row["validation"] = row["validation"] or last["validation"]
            self.snapshots.replace_last(row)
        else:
            self.snapshots.append(row)

    # ------------------------------------------------------------------------------- the page

    def _context(self, moment: str) -> dict:
        recipe, config = self.recipe, self.recipe.config
        rows = self.metrics.rows
        # the snapshot this refresh just took has every encoder's vectors as they are now
        labels = {name: self.watch.labels(len(norms)) for name, norms in self.snapshots.rows[-1]["norms"].items()}
        if self.summary is None:
            self.summary = summarize(recipe.dataset, recipe.placeholders, token_window(config.max_token_length))
        return {
            "title": ", ".join(p.token for p in recipe.placeholders) or "run",
            "run_dir": str(self.run_dir), "status": self.status, "moment": moment,
            "step": recipe.global_step, "max_steps": getattr(recipe, "max_steps", None),
            "loss": rows[-1]["loss"] if rows else None,
            "written_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "loss_plot": self._loss_plot(rows), "norm_plot": self._norm_plot(rows, labels),
            "ranges": self.watch.ranges, "labels": labels,
            "nearest": self.snapshots.rows,
            "prompts": list(config.validation_prompts or []), "validations": self._validations(),
            "data": self.summary, "config_yaml": getattr(recipe, "resolved_yaml", ""),
            "timings": self._timings(), "files": run_files(recipe, self.written),
        }

    def _loss_plot(self, rows: list[dict]) -> str | None:
        if not rows:
            return None
        png = plots.loss_and_lr([r["step"] for r in rows], [r["loss"] for r in rows], [r["lr"] for r in rows])
        return data_uri(png, "image/png")

    def _norm_plot(self, rows: list[dict], labels: dict[str, list[str]]) -> str | None:
        rows = [r for r in rows if r.get("norms")]
        if not rows:
            return None
        norms = {name: [r["norms"][name] for r in rows] for name in labels}
        png = plots.vector_norms([r["step"] for r in rows], norms, labels, self.watch.ranges)
        return data_uri(png, "image/png")

    def _validations(self) -> list[dict]:
        """Each validation folder: its step and, per prompt, its pictures (inlined, with the file)."""
        step_of = {r["validation"]: r["step"] for r in self.snapshots.rows if r["validation"]}
        folders = sorted((self.run_dir / "validation").glob("*/"))
        out = []
        for folder in folders:
            rel = str(folder.relative_to(self.run_dir))
            step = step_of.get(rel, _step_of_label(folder.name))
            cells: dict[int, list[dict]] = {}
            for picture in sorted(folder.glob("prompt*_image*.png")):
                prompt = int(picture.name[6:8])
                cells.setdefault(prompt, []).append(
                    {"uri": file_uri(picture, self.pictures), "file": str(picture.relative_to(self.run_dir))})
            out.append({"label": folder.name, "step": step, "folder": rel, "cells": cells})
        return sorted(out, key=lambda v: (v["step"] is None, v["step"] or 0, v["label"]))

    def _timings(self) -> list[tuple[str, str]]:
        now = time.perf_counter()
        seconds = self.step_seconds
        out = []
        if self.started is not None:
            out.append(("start-up (data check, model load, caching)", f"{self.started - self.created:.1f} s"))
        if seconds:
            out.append(("steps this session", f"{len(seconds)} (from step {self.resumed_at})"))
            out.append(("seconds per step", f"mean {statistics.fmean(seconds):.3f} s, median "
                                            f"{statistics.median(seconds):.3f} s"))
            out.append(("time in steps", f"{sum(seconds):.1f} s"))
        out.append(("total so far", f"{now - self.created:.1f} s"))
        if self.refresh_seconds is not None:
            out.append(("previous report refresh", f"{self.refresh_seconds:.2f} s"))
        return out


def _step_of_label(label: str) -> int | None:
    match = re.fullmatch(r"step_(\d+)", label)
    return int(match.group(1)) if match else None
