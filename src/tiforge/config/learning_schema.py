"""How the placeholder's vectors learn: rules on their norm and direction, where they start, and how
training timesteps are drawn (issue 20).

Every field left unset means what tiforge (and invoke-training) did before, so an invoke-training
config trains exactly as it did. The per-step vector rules are applied in `training.vector_rules`;
the start vectors in `model.placeholders`; the timesteps in `model.noise`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tiforge.config.data_schema import StrictModel


class LearningMethodsConfig(StrictModel):
    """A mixin of the SD and SDXL configs (its fields are top-level config keys)."""

    preserve_embedding_norm: bool = False
    """After each optimizer step, rescale every learned vector to the median norm of its text encoder's
    vocabulary (OneTrainer's option of the same name): the vectors keep learning a direction, never an
    out-of-vocabulary size."""
    embedding_norm_penalty: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Strength of a pull on each learned vector's norm toward the vocabulary's mean norm: adds
    strength x (norm - mean norm)^2 per vector to the loss (its gradient; the logged loss stays the
    denoising loss). null: off."""
    directional_update: bool = False
    """Learn only each vector's direction, its norm fixed at the vocabulary's mean norm ("Directional
    Textual Inversion", arXiv 2512.13672): the gradient is projected onto the sphere's tangent plane
    before the step and the vector put back on the sphere after it."""
    decay_toward_initializer: bool = False
    """The optimizer's weight decay pulls the vectors toward where they started instead of toward zero
    (same strength, optimizer.weight_decay, and the same learning rate)."""
    initialize_from_text_encoder_output: bool = False
    """Start from the text encoder's output for initializer_token / initial_phrase (its final hidden
    state at those tokens) rather than their input embedding ("Cross Initialization", arXiv
    2312.15905); on SDXL from each encoder's own output."""
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """How training timesteps are drawn in [min_timestep, max_timestep): uniform, or logit_normal
    (sigmoid of a normal number with logit_mean and logit_std, as the SD3 trainers do): most of them
    mid-schedule."""
    logit_mean: float = Field(0.0, allow_inf_nan=False)
    """logit_normal timesteps: the normal's mean (0: centred; below 0 favours low-noise timesteps)."""
    logit_std: float = Field(1.0, gt=0, allow_inf_nan=False)
    """logit_normal timesteps: the normal's spread (1.0; larger spreads the timesteps toward both ends)."""

    @model_validator(mode="after")
    def _learning_methods_agree(self):
        problems = learning_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def learning_problems(config) -> list[str]:
    """Combinations that would silently do nothing or contradict each other, with the fix."""
    problems: list[str] = []
    if config.preserve_embedding_norm and config.directional_update:
        problems.append("preserve_embedding_norm / directional_update: both fix the vectors' norm (to the "
                        "vocabulary's median and mean norm); set only one")
    if config.embedding_norm_penalty and (config.preserve_embedding_norm or config.directional_update):
        fixed = "preserve_embedding_norm" if config.preserve_embedding_norm else "directional_update"
        problems.append(f"embedding_norm_penalty: {fixed} already fixes the vectors' norm, so the penalty "
                        "would do nothing; set only one")
    if config.decay_toward_initializer and not optimizer_weight_decay(config.optimizer):
        problems.append("decay_toward_initializer: the optimizer has no weight decay to re-centre; set "
                        "optimizer.weight_decay (the pull's strength, e.g. 0.5)")
    if config.initialize_from_text_encoder_output and config.initial_embedding_file is not None:
        problems.append("initialize_from_text_encoder_output: initial_embedding_file brings trained vectors, "
                        "which are not encoded again; use initializer_token or initial_phrase, or drop one")
    if config.timestep_sampling != "logit_normal":
        # a resolved config.yaml writes the defaults out: only a changed value is a stray setting
        stray = [n for n in ("logit_mean", "logit_std")
                 if getattr(config, n) != type(config).model_fields[n].default]
        if stray:
            problems.append(f"{' / '.join(stray)}: only shape timestep_sampling: logit_normal, but "
                            f"timestep_sampling is {config.timestep_sampling}; set it to logit_normal or drop "
                            f"{' and '.join(stray)}")
    return problems


def optimizer_weight_decay(optimizer) -> float:
    """The weight decay the optimizer is configured with (optimizer_args win, as they do when built)."""
    args = optimizer.optimizer_args or {}
    value = args.get("weight_decay", getattr(optimizer, "weight_decay", None))
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
