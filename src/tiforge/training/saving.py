"""A run's files: the embedding, its snapshots and its resumable checkpoints, named by the output
plan (a run folder, or the diffusers / invokeai-ti / kohya layout the user's command line asked for)."""

from __future__ import annotations

from pathlib import Path

import torch

from tiforge.embeddings.files import save_embedding
from tiforge.training.checkpoints import save_checkpoint
from tiforge.training.output_layout import OutputPlan
from tiforge.training.progress import one_task

Vectors = torch.Tensor | dict[str, torch.Tensor]


class RunFiles:
    def __init__(self, config, plan: OutputPlan, run_dir: Path, token: str, metadata: dict, resolved_yaml: str,
                 progress: bool):
        self.config, self.plan, self.run_dir, self.token = config, plan, run_dir, token
        self.metadata, self.resolved_yaml, self.progress = metadata, resolved_yaml, progress
        self.options = {"format": config.save_format, "precision": config.save_precision}

    def embedding(self, vectors: Vectors, step: int) -> Path:
        save_embedding(self.plan.final, self.token, vectors, self.metadata, step=step, **self.options)
        return self.plan.final

    def snapshot(self, kind: str, index: int, vectors: Vectors, step: int) -> Path:
        """The embedding alone, as the diffusers example's --save_steps and kohya's intermediate files."""
        path = self.plan.snapshot(kind, index)
        save_embedding(path, self.token, vectors, self.metadata, step=step, warn_layout=False, **self.options)
        return path

    def checkpoint(self, kind: str, index: int, vectors: Vectors, step: int, state: dict) -> Path:
        plan = self.plan
        with one_task(f"saving checkpoint {kind} {index}", self.progress):
            path = save_checkpoint(
                self.run_dir, kind, index, self.token, vectors, self.metadata, self.config.max_checkpoints,
                state=state, config_yaml=self.resolved_yaml, folder=plan.checkpoint_dir(kind, index),
                siblings=plan.checkpoint_siblings(kind), step=step, extension=plan.extension,
                file_name=plan.final.name, warn_layout=False, **self.options)
            if plan.snapshots_with_checkpoints:
                self.snapshot(kind, index, vectors, step)
        return path
