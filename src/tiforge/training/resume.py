"""Finding the checkpoint to resume from and making sure the run it continues is the same run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tiforge.config.schema import TrainingConfig
from tiforge.training.checkpoints import CheckpointError, changed_vector_count, find_checkpoint, incompatible_fields

log = logging.getLogger("tiforge")


def resume_point(config: TrainingConfig) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    try:
        return find_checkpoint(config.resume_from_checkpoint, config.base_output_dir)
    except CheckpointError:
        if config.resume_from_checkpoint != "latest":
            raise
        # As in the diffusers and InvokeAI trainers: "latest" on a fresh output folder starts anew.
        log.info("resume_from_checkpoint: latest: no checkpoint in %s yet; starting a new run", config.base_output_dir)
        return None


def plain_defaults(config: TrainingConfig) -> dict:
    """The config's simple-valued defaults: what a checkpoint written before a field existed meant."""
    return {name: field.default for name, field in type(config).model_fields.items()
            if isinstance(field.default, (bool, int, float, str, type(None)))}


def check_resumable(state: dict, config: TrainingConfig, folder: Path) -> None:
    saved = {**plain_defaults(config), **state["config"]}
    problems = incompatible_fields(saved, config.model_dump(mode="json")) + changed_vector_count(state, config)
    if problems:
        raise CheckpointError(
            f"{folder}: cannot resume with a different setup; change these back or start a new run:\n  - "
            + "\n  - ".join(problems)
        )


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files of a killed run live only under hidden temporary names; clear them away."""
    for tmp in sorted(run_dir.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
