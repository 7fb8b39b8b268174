"""Where a run writes: its timestamped folder, embedding files and rotating checkpoints."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch

from .embedding_files import save_embedding


def make_run_dir(base_output_dir: str | Path) -> Path:
    base = Path(base_output_dir).expanduser()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        run_dir = base / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder in {base}")


def embedding_file_name(placeholder_token: str, extension: str = "safetensors") -> str:
    """`<cat-toy>` -> `cat-toy.safetensors`: the placeholder, safe on every file system."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", placeholder_token.strip("<>")).strip("._") or "embedding"
    return f"{stem}.{extension}"


def save_checkpoint(
    run_dir: Path, kind: str, index: int, token: str, vectors: torch.Tensor, metadata: dict, max_checkpoints: int | None,
    **save_options,
) -> Path:
    """Save `checkpoints/checkpoint-{kind}_{index}`; only then drop the oldest of that kind.

    The folder is filled under a hidden name and renamed, so a crash never leaves a partial one.
    """
    root = run_dir / "checkpoints"
    final = root / f"checkpoint-{kind}_{index:08d}"
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    extension = save_options.pop("extension", "safetensors")
    save_embedding(tmp / embedding_file_name(token, extension), token, vectors, metadata, **save_options)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if max_checkpoints is not None:
        done = sorted(p for p in root.glob(f"checkpoint-{kind}_*") if p.is_dir())
        for old in done[: max(0, len(done) - max_checkpoints)]:
            shutil.rmtree(old)
    return final
