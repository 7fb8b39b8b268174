"""A run's files: the embedding, its snapshots and its resumable checkpoints, named by the output
plan (a run folder, or the diffusers / invokeai-ti / kohya layout the user's command line asked for).

A run that trains several embeddings (`additional_embeddings`) writes each to its own file: the
first exactly where a single-embedding run writes it, every further one as `OutputPlan.for_additional`
places it; each checkpoint holds all of them."""

from __future__ import annotations

from pathlib import Path

import torch

from tiforge.embeddings.files import save_embedding
from tiforge.training.checkpoints import save_checkpoint
from tiforge.training.output_layout import OutputPlan
from tiforge.training.progress import one_task
from tiforge.training.run_folders import embedding_file_name

Vectors = torch.Tensor | dict[str, torch.Tensor]


class VectorsByToken(dict):
    """Every embedding's vectors of a run, keyed by placeholder token, the first embedding first."""


class RunFiles:
    def __init__(self, config, plan: OutputPlan, run_dir: Path, token: str, metadata: dict, resolved_yaml: str,
                 progress: bool):
        self.config, self.plan, self.run_dir, self.token = config, plan, run_dir, token
        self.metadata, self.resolved_yaml, self.progress = metadata, resolved_yaml, progress
        self.options = {"format": config.save_format, "precision": config.save_precision}
        self.plans = {token: plan, **{e.placeholder_token: plan.for_additional(e.placeholder_token)
                                      for e in getattr(config, "additional_embeddings", [])}}

    def _split(self, vectors: Vectors | VectorsByToken) -> VectorsByToken:
        return vectors if isinstance(vectors, VectorsByToken) else VectorsByToken({self.token: vectors})

    def embedding(self, vectors: Vectors | VectorsByToken, step: int) -> list[Path]:
        """Every embedding's final file; the first embedding's path first."""
        paths = []
        for token, v in self._split(vectors).items():
            path = self.plans[token].final
            save_embedding(path, token, v, self.metadata, step=step, **self.options)
            paths.append(path)
        return paths

    def snapshot(self, kind: str, index: int, vectors: Vectors | VectorsByToken, step: int) -> Path:
        """The embeddings alone, as the diffusers example's --save_steps and kohya's intermediate files.
        Returns the first embedding's file."""
        paths = []
        for token, v in self._split(vectors).items():
            path = self.plans[token].snapshot(kind, index)
            save_embedding(path, token, v, self.metadata, step=step, warn_layout=False, **self.options)
            paths.append(path)
        return paths[0]

    def checkpoint(self, kind: str, index: int, vectors: Vectors | VectorsByToken, step: int, state: dict) -> Path:
        plan = self.plan
        by_token = self._split(vectors)
        first = by_token[self.token]
        more = [(embedding_file_name(t, plan.extension), t, v) for t, v in by_token.items() if t != self.token]
        with one_task(f"saving checkpoint {kind} {index}", self.progress):
            path = save_checkpoint(
                self.run_dir, kind, index, self.token, first, self.metadata, self.config.max_checkpoints,
                state=state, config_yaml=self.resolved_yaml, folder=plan.checkpoint_dir(kind, index),
                siblings=plan.checkpoint_siblings(kind), step=step, extension=plan.extension,
                file_name=plan.final.name, warn_layout=False, more_embeddings=more, **self.options)
            if plan.snapshots_with_checkpoints:
                self.snapshot(kind, index, by_token, step)
        return path
