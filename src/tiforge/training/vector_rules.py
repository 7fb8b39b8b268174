"""Rules the learned vectors follow at each optimizer step, beyond what the optimizer does.

Left alone, textual-inversion vectors grow far past the norm of any vocabulary word, and the
embedding then drowns out the rest of the prompt. The rules (config.learning_schema):

- preserve_embedding_norm: after the step, each vector is rescaled to the vocabulary's median norm
  (OneTrainer's rule: only the direction is really learned).
- embedding_norm_penalty: the gradient of strength x (norm - vocabulary mean norm)^2 per vector is
  added to the loss's gradient before the step.
- directional_update: the gradient loses its component along the vector (the sphere's tangent plane)
  before the step, and the vector is put back at the vocabulary's mean norm after it ("Directional
  Textual Inversion", arXiv 2512.13672).
- decay_toward_initializer: the optimizer's own weight decay is switched off for the vectors and
  applied here instead, pulling them toward their start rather than toward zero.

Every method takes the vectors, their start and their vocabulary's norms explicitly, so a run that
trains several embeddings applies the rules to each in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tiforge.config.learning_schema import optimizer_weight_decay
from tiforge.embeddings.vocabulary import NormRange
from tiforge.training.model_setup import starting_vectors

_TINY = 1e-12  # keeps a zero vector from dividing by zero


@dataclass(frozen=True)
class VocabularyNorms:
    """Norm statistics of one text encoder's vocabulary (its frozen token-embedding table)."""

    mean: float
    median: float
    low: float
    high: float

    @classmethod
    def of_table(cls, table: torch.Tensor) -> "VocabularyNorms":
        spread = NormRange.of(table)  # the same statistics the report and `inspect` show
        return cls(spread.mean, spread.median, spread.min, spread.max)


@dataclass
class RuleTarget:
    """One set of trainable vectors, [n, width], with what the rules compare them to."""

    vectors: nn.Parameter
    initial: torch.Tensor
    norms: VocabularyNorms


def _with_norm(vectors: torch.Tensor, norm: float) -> torch.Tensor:
    return vectors / vectors.norm(dim=1, keepdim=True).clamp(min=_TINY) * norm


@dataclass
class VectorRules:
    preserve_norm: bool = False
    norm_penalty: float = 0.0
    directional: bool = False
    decay: float = 0.0  # the optimizer's weight decay, re-centred on the start vectors (0: off)
    targets: list[RuleTarget] = field(default_factory=list)
    optimizer: object = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config) -> "VectorRules":
        return cls(preserve_norm=config.preserve_embedding_norm, norm_penalty=config.embedding_norm_penalty or 0.0,
                   directional=config.directional_update,
                   decay=optimizer_weight_decay(config.optimizer) if config.decay_toward_initializer else 0.0)

    @property
    def active(self) -> bool:
        return bool(self.preserve_norm or self.norm_penalty or self.directional or self.decay)

    # -- per set of vectors ------------------------------------------------------------------------

    @torch.no_grad()
    def shape_gradient(self, vectors: nn.Parameter, norms: VocabularyNorms) -> None:
        """Before the step: add the norm penalty's gradient; keep only the direction-changing part."""
        if vectors.grad is None:
            return
        grad = vectors.grad
        length = vectors.norm(dim=1, keepdim=True).clamp(min=_TINY)
        unit = vectors / length
        if self.norm_penalty:
            grad.add_(unit * (2 * self.norm_penalty) * (length - norms.mean))
        if self.directional:
            grad.sub_(unit * (grad * unit).sum(dim=1, keepdim=True))

    @torch.no_grad()
    def constrain(self, vectors: nn.Parameter, initial: torch.Tensor, norms: VocabularyNorms, rate: float) -> None:
        """After a finite step at learning rate `rate`: the decay toward the start, then the norm rules."""
        if self.decay:
            vectors.sub_((vectors - initial.to(vectors.device, vectors.dtype)) * (rate * self.decay))
        if self.preserve_norm:
            vectors.copy_(_with_norm(vectors, norms.median))
        elif self.directional:
            vectors.copy_(_with_norm(vectors, norms.mean))

    def release_weight_decay(self, optimizer, vectors: nn.Parameter) -> None:
        """With decay toward the start, the optimizer must not also pull the vectors toward zero."""
        if self.decay:
            for group in param_groups_of(optimizer, vectors):
                group["weight_decay"] = 0.0

    # -- every target at once (the recipe's calls) ---------------------------------------------------

    def bind(self, optimizer, targets: list[RuleTarget]) -> "VectorRules":
        self.targets, self.optimizer = targets, optimizer
        for target in targets:
            self.release_weight_decay(optimizer, target.vectors)
        return self

    def wrap_step(self, step):
        """The optimizer's step with the gradient rules before it (after unscaling and clipping)."""
        if not self.active:
            return step

        def step_with_rules():
            for target in self.targets:
                self.shape_gradient(target.vectors, target.norms)
            return step()

        return step_with_rules

    def after_step(self) -> None:
        for target in self.targets:
            self.constrain(target.vectors, target.initial, target.norms, step_rate(self.optimizer, target.vectors))


def param_groups_of(optimizer, param: torch.Tensor) -> list[dict]:
    return [g for g in optimizer.param_groups if any(p is param for p in g["params"])]


def step_rate(optimizer, param: torch.Tensor) -> float:
    """The rate the optimizer stepped `param` with (D-Adaptation/Prodigy: lr times their estimate d)."""
    groups = param_groups_of(optimizer, param)
    if not groups:
        return 0.0
    return float(groups[0]["lr"]) * float(groups[0].get("d", 1.0))


def placeholder_targets(embeddings, initial: list[torch.Tensor] | None = None) -> list[RuleTarget]:
    """A target per placeholder embedding module (one per text encoder): its `vectors`, its start
    (`initial`, in the same order; default: the vectors as they are now) and its vocabulary's norms."""
    starts = initial if initial is not None else [e.vectors.detach().clone() for e in embeddings]
    return [RuleTarget(e.vectors, start.detach().float().to(e.vectors.device), VocabularyNorms.of_table(e.base.weight))
            for e, start in zip(embeddings, starts)]


def build_vector_rules(config, prompt_encoder, optimizer, parts, resumed: bool) -> VectorRules:
    """The rules for a run's placeholder, bound to its vectors. A resumed run's start vectors are
    rebuilt from the initializer (the checkpoint holds where the vectors are, not where they began)."""
    rules = VectorRules.from_config(config)
    if not rules.active:
        return rules
    initial = None
    if resumed and rules.decay:
        by_name = starting_vectors(config, parts, None)
        initial = [by_name[name] for name in prompt_encoder.names]
    return rules.bind(optimizer, placeholder_targets(prompt_encoder.embeddings, initial))
