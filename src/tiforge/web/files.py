"""Downloads: only files inside a run folder under the web root. Every path is resolved (symlinks
followed) and must stay inside its run folder; anything else is "not found" (404), never read."""

from __future__ import annotations

from pathlib import Path

from tiforge.web.errors import ApiError
from tiforge.web.runs import is_run_folder

_NOT_FOUND = "no such file in the run folders"


def run_folder(root: Path, rid: str) -> Path:
    """The run folder of an id (its path under root), refusing anything outside root."""
    if not rid or Path(rid).is_absolute() or ".." in Path(rid).parts:
        raise ApiError(404, "no such run")
    folder = (root / rid).resolve()
    if folder == root or not folder.is_relative_to(root) or not folder.is_dir() or not is_run_folder(folder):
        raise ApiError(404, "no such run")
    return folder


def split_run_path(root: Path, path: str) -> tuple[Path, str]:
    """`runs/2026-12-01_10-00-00/validation/final/grid.png` -> (its run folder, the path inside it):
    the longest leading part that is a run folder."""
    parts = path.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        rid = "/".join(parts[:cut])
        try:
            return run_folder(root, rid), "/".join(parts[cut:])
        except ApiError:
            continue
    raise ApiError(404, _NOT_FOUND)


def file_in_run(folder: Path, relpath: str) -> Path:
    if not relpath or Path(relpath).is_absolute():
        raise ApiError(404, _NOT_FOUND)
    target = (folder / relpath).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise ApiError(404, _NOT_FOUND)
    return target


def safe_file(root: Path, path: str) -> Path:
    folder, inside = split_run_path(root, path)
    return file_in_run(folder, inside)
