"""Where a run writes: its timestamped folder and the names of its files."""

from __future__ import annotations

import re
import time
from pathlib import Path



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


class OutputError(OSError):
    """The output folder cannot take this run; the message says why and where."""


def check_output_space(base_output_dir: str | Path, needed_bytes: int) -> None:
    """Fail before training, not hours into it, when the output folder is unwritable or too small."""
    import shutil
    import tempfile

    base = Path(base_output_dir).expanduser()
    if base.exists() and not base.is_dir():
        raise OutputError(f"base_output_dir {base}: is a file, not a folder; choose a folder for the run folders")
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".tiforge-write-test"):
            pass
    except OSError as err:
        raise OutputError(f"base_output_dir {base}: cannot write there ({err.strerror or err})") from None
    free = shutil.disk_usage(base).free
    if free < needed_bytes:
        raise OutputError(
            f"base_output_dir {base}: {free / 2**20:.0f} MiB free, but this run needs about "
            f"{needed_bytes / 2**20:.0f} MiB for checkpoints and validation images; free some space or "
            "lower max_checkpoints / the validation settings"
        )


def estimate_output_bytes(config, num_vectors: int, dim: int, max_steps: int, updates_per_epoch: int) -> int:
    vectors = num_vectors * dim * 4
    checkpoint = vectors * 4 + 256 * 1024  # vectors, Adam moments, RNG states and configs
    every = config.save_every_n_steps or (config.save_every_n_epochs or 0) * updates_per_epoch
    count = max_steps // every if every else 0
    if config.max_checkpoints is not None:
        count = min(count, config.max_checkpoints + 1)
    h, w = config.data_loader.height_width
    image = h * w * 3 // 2  # a PNG of a photo is about half the raw size
    val_every = config.validate_every_n_steps or (config.validate_every_n_epochs or 0) * updates_per_epoch
    validations = (max_steps // val_every if val_every else 0) + 1
    per_validation = len(config.validation_prompts) * config.num_validation_images_per_prompt * image * 2
    return checkpoint * count + vectors + validations * per_validation + 16 * 2**20


def log_to_run_dir(run_dir: Path) -> None:
    """The run's log goes to <run folder>/train.log, and only this run's."""
    import logging

    logger = logging.getLogger("tiforge")
    for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(old)  # an earlier run's log in this process
        old.close()
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
