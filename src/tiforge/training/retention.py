"""kohya's retention rules for periodic saves: `save_last_n_epochs` keeps the embeddings of the last N
epoch saves, `save_last_n_steps` those saved within the last N steps; their `_state` variants do the
same for the resumable checkpoints (and default to them). Older saves of the run are removed after
each new save, whatever the layout names them."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from tiforge.training.output_layout import OutputPlan

log = logging.getLogger("tiforge")
_LAST_NUMBER = re.compile(r"(\d+)(?=\D*$)")


def _kept(kind: str, saved: int, now: int, every: int, last_n: int) -> bool:
    # epochs: the last N saves (kohya removes epoch now - every*N); steps: the saves of the last N steps
    return saved > now - every * last_n if kind == "epoch" else saved >= now - last_n


def _saves(folder: Path, is_save) -> list[tuple[Path, int]]:
    found = []
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _LAST_NUMBER.search(path.name)
        if match and is_save(path, int(match.group(1))):
            found.append((path, int(match.group(1))))
    return found


def prune_old_saves(plan: OutputPlan, config, kind: str, now: int) -> list[Path]:
    """Remove the saves of `kind` ("step" or "epoch") that fall out of kohya's window at save `now`."""
    if kind == "epoch":
        every, files_n, state_n = config.save_every_n_epochs, config.save_last_n_epochs, config.save_last_n_epochs_state
    else:
        every, files_n, state_n = config.save_every_n_steps, config.save_last_n_steps, config.save_last_n_steps_state
    state_n = state_n or files_n
    removed: list[Path] = []
    if every is None or (files_n is None and state_n is None):
        return removed
    # every embedding of the run has its snapshots (additional_embeddings: beside the first's or in its folder)
    plans = [plan, *(plan.for_additional(e.placeholder_token) for e in getattr(config, "additional_embeddings", []))]
    for each in plans if files_n is not None else []:
        here = each.snapshot(kind, now).parent
        for path, i in _saves(here, lambda p, i, each=each: p.is_file() and each.snapshot(kind, i) == p):
            if i != now and not _kept(kind, i, now, every, files_n):
                path.unlink(missing_ok=True)
                removed.append(path)
    if state_n is not None:
        folder = plan.checkpoint_dir(kind, now).parent
        for path, i in _saves(folder, lambda p, i: p.is_dir() and plan.checkpoint_dir(kind, i) == p):
            if i != now and not _kept(kind, i, now, every, state_n):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    for path in removed:
        log.info("removed old save (save_last_n_%ss): %s", kind, path)
    return removed
