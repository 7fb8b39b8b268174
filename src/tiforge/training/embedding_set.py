"""The run's embeddings beyond the first (`additional_embeddings`): their starting vectors, their
optimizer parameter groups (each its own learning rate), freezing after `stop_after_steps`, and
their vectors for files and checkpoints.

The first embedding stays what it always was (the top-level placeholder_token, its vectors under
`vectors` in a checkpoint), so a single-embedding run is the same run as before, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from tiforge.model.placeholders import initial_vectors
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.training.saving import VectorsByToken

log = logging.getLogger("tiforge")

STATE_KEY = "additional_vectors"  # {token: {text encoder: [n, dim]}} in a checkpoint's training state


def additional_starting_vectors(entry, parts, state: dict | None) -> dict[str, torch.Tensor]:
    """An additional embedding's vectors per text encoder: a checkpoint's, or fresh from its initializer."""
    if state:
        saved = state.get(STATE_KEY, {})
        if entry.placeholder_token not in saved:
            from tiforge.training.checkpoints import CheckpointError

            raise CheckpointError(f"the checkpoint holds no vectors for additional embedding "
                                  f"{entry.placeholder_token!r}; resume with the config it was saved with")
        return saved[entry.placeholder_token]
    return {
        name: initial_vectors(
            tokenizer, encoder.get_input_embeddings().weight, num_vectors=entry.num_vectors,
            initializer_token=entry.initializer_token, initial_phrase=entry.initial_phrase,
            initial_embedding_file=entry.initial_embedding_file, placeholder_token=entry.placeholder_token, part=name,
        )
        for name, tokenizer, encoder in parts.text_encoders
    }


@dataclass
class EmbeddingSet:
    """Every embedding of the run, index 0 the first; `entries[i - 1]` configures embedding i."""

    prompt_encoder: PromptEncoder
    entries: list
    frozen: list = field(default_factory=list)  # the Parameters past their stop_after_steps
    _hooked_optimizer: object = None

    @classmethod
    def add_to(cls, prompt_encoder: PromptEncoder, config, parts, state: dict | None) -> "EmbeddingSet":
        """Adds each additional embedding's placeholder to the model (after the first, already added)."""
        entries = list(getattr(config, "additional_embeddings", []))
        for entry in entries:
            placeholder = prompt_encoder.add_placeholder(entry.placeholder_token,
                                                         additional_starting_vectors(entry, parts, state))
            log.info("placeholder %r -> %d vector(s), token ids %s%s", placeholder.token, placeholder.num_vectors,
                     list(placeholder.ids),
                     f", stops after step {entry.stop_after_steps}" if entry.stop_after_steps else "")
        return cls(prompt_encoder, entries)

    @property
    def tokens(self) -> list[str]:
        return [p.token for p in self.prompt_encoder.placeholders]

    def param_groups(self, lr_scale: float) -> list[dict]:
        """One optimizer group per embedding: the first at the run's rate, each further one at its own
        learning_rate (scaled as the run's is by scale_lr) or the run's."""
        groups = [{"params": self.prompt_encoder.parameters_of(0)}]
        for index, entry in enumerate(self.entries, start=1):
            group = {"params": self.prompt_encoder.parameters_of(index)}
            if entry.learning_rate is not None:
                group["lr"] = entry.learning_rate * lr_scale
            groups.append(group)
        return groups

    def freeze_due(self, completed_steps: int, optimizer) -> None:
        """Embeddings whose stop_after_steps have passed stop changing, exactly: their gradient is zero
        from then on (so clipping and, with several processes, DDP's reduction go on as before), and it
        is dropped right before each optimizer step, so that the optimizer skips them altogether (no
        momentum, no weight decay)."""
        for index, entry in enumerate(self.entries, start=1):
            if entry.stop_after_steps is None or completed_steps < entry.stop_after_steps:
                continue
            new = [p for p in self.prompt_encoder.parameters_of(index) if all(p is not f for f in self.frozen)]
            if not new:
                continue
            for parameter in new:
                parameter.register_hook(torch.zeros_like)
                self.frozen.append(parameter)
                if not self._hook_optimizer(optimizer):  # not a torch.optim.Optimizer: no gradient at all
                    parameter.requires_grad_(False)      # (exact on one process)
            log.info("%s: stop_after_steps %d reached; its vectors stay as they are", entry.placeholder_token,
                     entry.stop_after_steps)

    def _hook_optimizer(self, optimizer) -> bool:
        """Registers (once) the pre-step hook that drops the frozen gradients; False where it cannot."""
        inner = getattr(optimizer, "optimizer", optimizer)  # inside accelerate's wrapper
        if self._hooked_optimizer is None and hasattr(inner, "register_step_pre_hook"):
            inner.register_step_pre_hook(self._drop_frozen_gradients)
            self._hooked_optimizer = inner
        return self._hooked_optimizer is inner

    def _drop_frozen_gradients(self, *_) -> None:
        for parameter in self.frozen:
            parameter.grad = None

    def file_vectors(self, text_model: PromptEncoder) -> VectorsByToken:
        """Every embedding's vectors as its file stores them, keyed by token, the first first."""
        return VectorsByToken({p.token: text_model.file_vectors(i) for i, p in enumerate(text_model.placeholders)})

    def state(self) -> dict:
        """The additional embeddings' vectors for a checkpoint's training state (empty: none)."""
        if not self.entries:
            return {}
        return {STATE_KEY: {entry.placeholder_token: {k: v.cpu().float() for k, v in
                                                      self.prompt_encoder.vectors(index).items()}
                            for index, entry in enumerate(self.entries, start=1)}}
