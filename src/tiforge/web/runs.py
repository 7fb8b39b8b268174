"""The run folders under the web root: what each holds (config, loss history, report, validation
grids, embeddings), found by the files tiforge writes into every run folder."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import yaml

MARKERS = ("train.log", "report.html", "config.yaml")
MAX_DEPTH = 4
# Folders inside a run (or the UI's own) that hold no runs of their own.
_NOT_RUNS = {"checkpoints", "validation", "sample", "logs", ".tiforge-web", ".git", "node_modules", "__pycache__"}
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
_LOG_STEP = re.compile(r"step[ _]0*(\d+)")


def is_run_folder(folder: Path) -> bool:
    return folder.name not in _NOT_RUNS and any((folder / m).is_file() for m in MARKERS) and (
        folder.parent.name != "checkpoints")


def find_runs(root: Path) -> list[Path]:
    """Run folders under root (at most MAX_DEPTH levels down), newest first."""
    found = []
    for here, dirs, _files in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        dirs[:] = [d for d in dirs if d not in _NOT_RUNS and not d.startswith(".") and depth < MAX_DEPTH]
        if depth and is_run_folder(Path(here)):
            found.append(Path(here))
            dirs[:] = []  # a run's subfolders are its own outputs
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def run_id(root: Path, folder: Path) -> str | None:
    """The run's id (its path under root), or None for a folder outside root."""
    try:
        return Path(folder).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def file_url(rid: str, relpath: str) -> str:
    return f"/api/files/{quote(rid)}/{quote(relpath)}"


def history(folder: Path) -> list[list]:
    """[[step, loss, lr], ...] from metrics.jsonl (written by the run's report); [] without it."""
    rows: dict[int, list] = {}
    try:
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            item = json.loads(line)
            rows[int(item["step"])] = [int(item["step"]), item.get("loss"), item.get("lr")]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    return [rows[s] for s in sorted(rows)]


def _config(folder: Path) -> dict:
    try:
        data = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def grids(folder: Path) -> list[Path]:
    return sorted(folder.glob("validation/*/grid.png"), key=lambda p: p.stat().st_mtime)


def embeddings(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in EMBEDDING_SUFFIXES)


def _last_step(folder: Path, rows: list[list]) -> int | None:
    if rows:
        return rows[-1][0]
    steps = [int(m.group(1)) for p in folder.glob("checkpoints/*") for m in [_LOG_STEP.search(p.name)] if m]
    return max(steps) if steps else None


def summary(root: Path, folder: Path) -> dict:
    rid = run_id(root, folder)
    rows = history(folder)
    config = _config(folder)
    kind = str(config.get("type", ""))
    return {
        "id": rid, "name": folder.name if folder.parent == root else f"{folder.parent.name}/{folder.name}",
        "steps": _last_step(folder, rows), "loss": rows[-1][1] if rows else None,
        "family": "sdxl" if "SDXL" in kind else "sd" if kind else None,
        "started": datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "report": file_url(rid, "report.html") if (folder / "report.html").is_file() else None,
        "grids": [file_url(rid, g.relative_to(folder).as_posix()) for g in grids(folder)],
        "embeddings": [{"path": str(e), "url": file_url(rid, e.name)} for e in embeddings(folder)],
    }


def details(root: Path, folder: Path) -> dict:
    try:
        config_yaml = (folder / "config.yaml").read_text(encoding="utf-8")
    except OSError:
        config_yaml = None
    return {**summary(root, folder), "config_yaml": config_yaml, "history": history(folder)}
