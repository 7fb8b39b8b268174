"""A queue of independent concepts (`tiforge train-many`): trained one after another in one process,
each model loaded once for the whole queue (`model.reuse`), a summary at the end.

A concept whose config or data is wrong, or whose training fails, is reported and the queue goes on;
Ctrl-C stops the concept in training (its checkpoint and embedding saved, as `tiforge train` does) and
the concepts after it.

Concepts come from several config files, or from one config and a folder of concept folders: each
subfolder `<name>/` trains `<name>` (placeholder_token `<name>`, its pictures the dataset, outputs in
base_output_dir/<name>); a `concept.yaml` inside overrides any field for that concept (e.g. its
initializer_token).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("tiforge")

CONCEPT_FILE = "concept.yaml"


@dataclass
class Concept:
    label: str
    load: Callable[[], object]  # -> TrainingConfig; raises ConfigError (checked when its turn comes)


@dataclass
class Outcome:
    label: str
    ok: bool
    seconds: float
    embedding_paths: list[Path] = field(default_factory=list)
    steps: int = 0
    final_loss: float | None = None
    error: str | None = None


def concepts_from_configs(paths: list[str], load: Callable[[str], object]) -> list[Concept]:
    return [Concept(str(p), lambda p=p: load(p)) for p in paths]


def concepts_from_folder(base: dict, folder: Path, build: Callable[[dict, str], object]) -> list[Concept]:
    """One concept per subfolder of `folder` (sorted by name), on the base config `base`."""
    from tiforge.config.schema import ConfigError

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--concepts {folder}: no such folder")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise ConfigError(f"--concepts {folder}: no concept folders in it (one subfolder of pictures per concept)")
    return [Concept(sub.name, lambda sub=sub: build(concept_data(base, sub), str(sub))) for sub in subfolders]


def concept_data(base: dict, sub: Path) -> dict:
    """The base config made this folder's concept; its concept.yaml (if any) wins over both."""
    from tiforge.config.loading import read_config_file

    data = copy.deepcopy(base)
    data["placeholder_token"] = f"<{sub.name}>"
    data.setdefault("data_loader", {}).setdefault("dataset", {})["dataset_dir"] = str(sub)
    data["base_output_dir"] = str(Path(str(base.get("base_output_dir", "."))).expanduser() / sub.name)
    own = sub / CONCEPT_FILE
    if own.is_file():
        _merge(data, read_config_file(own))
    return data


def _merge(data: dict, overrides: dict) -> None:
    """Mappings merge key by key (a concept's `data_loader: {caption_preset: style}` keeps the rest)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def train_queue(concepts: list[Concept], train: Callable[[object], object],
                announce: Callable[[str], None] = log.info) -> list[Outcome]:
    """Each concept in turn with the models kept loaded; never raises for one concept's failure."""
    from tiforge.model.reuse import keep_models_loaded
    from tiforge.training.interrupts import TrainingStopped

    outcomes: list[Outcome] = []
    with keep_models_loaded():
        for number, concept in enumerate(concepts, start=1):
            announce(f"concept {number}/{len(concepts)}: {concept.label}")
            started = time.perf_counter()
            try:
                result = train(concept.load())
            except TrainingStopped as stopped:
                outcomes.append(Outcome(concept.label, False, time.perf_counter() - started, error=str(stopped)))
                if stopped.exit_code >= 128:  # Ctrl-C or a kill signal: the user wants the queue to stop too
                    outcomes += [Outcome(c.label, False, 0.0, error="not started (interrupted)")
                                 for c in concepts[number:]]
                    break
            except Exception as err:  # noqa: BLE001 - the queue's promise: one concept failing stops only it
                log.error("concept %s failed: %s", concept.label, err)
                outcomes.append(Outcome(concept.label, False, time.perf_counter() - started,
                                        error=f"{type(err).__name__}: {err}" if not _user_error(err) else str(err)))
            else:
                outcomes.append(Outcome(concept.label, True, time.perf_counter() - started,
                                        list(result.embedding_paths or [result.embedding_path]),
                                        result.global_step, result.final_loss))
    return outcomes


def _user_error(err: Exception) -> bool:
    from tiforge.frontends.cli import _user_error_types

    return isinstance(err, _user_error_types())


def summary(outcomes: list[Outcome]) -> str:
    """The table printed at the end: each concept's result, or why it failed."""
    done = sum(o.ok for o in outcomes)
    lines = [f"train-many: {done} of {len(outcomes)} concept(s) trained"]
    for o in outcomes:
        if o.ok:
            loss = f"{o.final_loss:.4f}" if o.final_loss is not None else "-"
            lines.append(f"  ok      {o.label}: {o.steps} steps, loss {loss}, {o.seconds:.0f} s")
            lines += [f"          {p}" for p in o.embedding_paths]
        else:
            first, *rest = (o.error or "failed").splitlines()
            lines.append(f"  FAILED  {o.label}: {first}")
            lines += [f"          {line}" for line in rest]
    return "\n".join(lines)
