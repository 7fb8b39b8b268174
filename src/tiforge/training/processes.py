"""What data-parallel training needs beyond accelerate: one run folder for all processes, one
decision to stop, and a check that every process learned the same vectors."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tiforge.training.output_layout import flat_run_dir
from tiforge.training.run_folders import check_output_space, make_run_dir

log = logging.getLogger("tiforge")


def fresh_accelerator_state() -> None:
    # accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (tests, the console UI, benchmarks) must be free to choose another mixed precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def make_accelerator(config, run_dir: Path):
    """A fresh accelerator for this run: its accumulation, mixed precision, trackers and log folder."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    fresh_accelerator_state()
    return Accelerator(
        # Without CUDA, only an explicit cpu=True lets `accelerate launch` start gloo ranks.
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision or "no",
        log_with=None if config.report_to in (None, "none") else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


def new_run_dir(config) -> Path:
    """The main process makes the timestamped folder; the others are told its name. A flat layout
    (the other tools' command lines) writes into base_output_dir itself."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        check_output_space(config.base_output_dir, 0)  # unwritable or not a folder: say so before mkdir fails
    if config.output_layout != "run_folders":
        return flat_run_dir(config)  # the same folder on every process
    holder = [str(make_run_dir(config.base_output_dir)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


def agreed(accelerator, flag: bool) -> bool:
    """True when any process saw `flag`; every process must stop at the same step."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def check_ranks_agree(accelerator, vectors: torch.Tensor) -> None:
    if accelerator.num_processes == 1:
        return
    gathered = accelerator.gather(vectors.unsqueeze(0))
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("the learned vectors differ between processes; data-parallel training went out of step")
    log.info("vectors identical across %d processes", accelerator.num_processes)
