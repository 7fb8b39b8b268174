"""Typed training configuration, compatible with invoke-training's `SdTextualInversionConfig` and
`SdxlTextualInversionConfig` YAML.

Everything a user can get wrong is checked here, before any model is loaded, and reported all at
once with the field path at fault.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from tiforge.config.data_schema import StrictModel, TextualInversionSDDataLoaderConfig
from tiforge.config.learning_schema import LearningMethodsConfig
from tiforge.config.optimizer_schema import (MAX_LEARNING_RATE, AdamWOptimizerConfig, NamedOptimizerConfig,  # noqa: F401
                                             OptimizerConfig, ProdigyOptimizerConfig, canonical_optimizer_name)

SampleSampler = Literal["ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                        "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"]
ReportTo = Literal[
    "all", "none", "tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio"
]



# The frozen weights' dtype that goes with each mixed precision (the other tools cast them so).
WEIGHT_DTYPE_OF_MIXED_PRECISION = {"fp16": "float16", "bf16": "bfloat16", "no": "float32"}


class ConfigError(ValueError):
    """A config a user must fix; the message lists every problem with its field path."""



# ------------------------------------------------------------------------------------ optimizer
# (the optimizer configs live in config.optimizer_schema; the schedule's fields are below)

LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    # kohya's and transformers' additions (adafactor: the rate Adafactor chooses, for the log)
    "piecewise_constant", "cosine_with_min_lr", "adafactor",
]


# --------------------------------------------------------------------------------------- config


class SdTextualInversionConfig(LearningMethodsConfig, StrictModel):
    # invoke-training has used both spellings over its releases; both mean the same pipeline.
    type: Literal["SD_TEXTUAL_INVERSION", "TEXTUAL_INVERSION_SD"] = "SD_TEXTUAL_INVERSION"

    seed: int | None = None
    base_output_dir: str
    report_to: ReportTo | None = "tensorboard"

    max_train_steps: int | None = Field(None, gt=0)
    max_train_epochs: int | None = Field(None, gt=0)
    save_every_n_steps: int | None = Field(None, gt=0)
    save_every_n_epochs: int | None = Field(None, gt=0)
    validate_every_n_steps: int | None = Field(None, gt=0)
    validate_every_n_epochs: int | None = Field(None, gt=0)

    model: str
    hf_variant: str | None = "fp16"
    single_file_config: str | None = None
    """A local diffusers-format folder holding the component configs and tokenizer for a single-file
    `model`; without it diffusers fetches them from the hub, which fails offline."""

    num_vectors: int = Field(1, ge=1, le=75)
    placeholder_token: str
    initializer_token: str | None = None
    initial_embedding_file: str | None = None
    initial_phrase: str | None = None

    optimizer: OptimizerConfig = Field(default_factory=AdamWOptimizerConfig)
    scale_lr: bool = False
    """Multiply the learning rate by processes x batch size x gradient accumulation (diffusers and InvokeAI)."""
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int | float = Field(0, ge=0)
    """Warm-up steps, or (below 1, as kohya reads it) a fraction of the training steps."""
    lr_num_cycles: int = Field(1, ge=1)
    lr_power: float = 1.0
    lr_scheduler_args: dict[str, Any] | None = None
    """Further keyword arguments of the schedule (kohya's --lr_scheduler_args), e.g. step_rules of
    piecewise_constant or min_lr of cosine_with_min_lr."""
    lr_scheduler_min_lr_ratio: float | None = Field(None, ge=0, le=1)
    """cosine_with_min_lr: the lowest rate as a fraction of the learning rate (kohya's flag)."""
    lr_scheduler_type: str | None = None
    """A schedule class instead of lr_scheduler: a name in torch.optim.lr_scheduler or module.Class,
    built with lr_scheduler_args (kohya's flag)."""
    lr_step_schedule: str | None = None
    """AUTOMATIC1111's step schedule, "5e-3:100, 1e-3:1000, 1e-5": each rate until that step, the last
    one to the end. A learning_rate written that way sets it."""

    min_snr_gamma: float | None = Field(5.0, gt=0)
    cache_vae_outputs: bool | None = None
    """Encode every picture once before training (both mirror images where it flips at random) instead of
    every step. null: whenever that is exact, i.e. no random crop or colour augmentation; true: insist
    (refused with those); false: never."""
    cache_vae_outputs_to_disk: bool = False
    """Keep the cached latents on disk (kohya's cache_latents_to_disk), keyed by image content, size,
    crop and VAE, so a second run with the same data skips the VAE entirely."""
    latent_cache_dir: str | None = None
    """Where disk-cached latents live (default: ~/.cache/tiforge/latents)."""
    enable_cpu_offload_during_validation: bool = False
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    xformers: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool | Literal["auto"] = "auto"
    """torch.compile the UNet for training (kohya's --torch_compile): true, false, or auto, which compiles
    only where the compile time is measured to be repaid over the run's steps. A failing compile warns
    and trains on uncompiled."""
    max_checkpoints: int | None = Field(None, ge=1)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    max_grad_norm: float | None = Field(None, gt=0)

    validation_prompts: list[str] = Field(default_factory=list)
    negative_validation_prompts: list[str] | None = None
    num_validation_images_per_prompt: int = Field(4, ge=1)
    num_validation_inference_steps: int = Field(25, ge=1)
    validation_guidance_scale: float = Field(7.5, ge=0)

    train_batch_size: int = Field(4, ge=1)
    use_masks: bool = False

    push_to_hub: bool = False
    """Upload the final embedding to the hub repo `hub_model_id` (default: the output folder's name)."""
    hub_model_id: str | None = None
    hub_token: str | None = None
    output_name: str | None = None
    """File name (without extension) of the saved embeddings; default: the placeholder."""
    allow_tf32: bool = False
    save_format: Literal["diffusers", "a1111", "kohya"] = "kohya"
    """Layout of the saved embeddings: kohya `emb_params` (the default: diffusers, A1111, ComfyUI, kohya and
    InvokeAI all load it), diffusers `{token: tensor}` (InvokeAI refuses several vectors in it), or a1111
    `string_to_param` (.pt)."""
    save_model_as: Literal["safetensors", "pt", "bin", "ckpt"] = "safetensors"
    save_precision: Literal["float32", "float16", "bfloat16"] = "float32"
    install_embeddings_root: str | None = None
    """After training, also write `<root>/embeddings/<trigger>/learned_embeds.bin` (InvokeAI's layout)."""
    resume_from_checkpoint: str | None = None
    """`latest` (the newest checkpoint of any run in base_output_dir), a checkpoint folder, a run folder,
    or a checkpoint name such as `checkpoint-step_00001500` (`checkpoint-1500` in the diffusers layout).
    The run continues in that run folder."""
    max_nonfinite_steps: int = Field(5, ge=1)
    """Steps in a row with a NaN/inf loss or gradient that are skipped before training stops."""
    output_layout: Literal["run_folders", "diffusers", "invokeai", "kohya"] = "run_folders"
    """Where outputs go: `run_folders` (a timestamped folder per run, invoke-training's way), or flat in
    base_output_dir named as the diffusers example, invokeai-ti or kohya-ss name them (set by their flags)."""
    save_embedding_every_n_steps: int | None = Field(None, ge=1)
    """Also write the embedding alone every N steps (the diffusers example's --save_steps)."""

    # ---- conditioning, noise and loss: kohya-ss's options (issue 18) ----
    v2: bool = False
    """The model is SD 2.x (kohya's --v2): checked against the model, which decides its family itself."""
    v_parameterization: bool = False
    """Train v-prediction (kohya's --v_parameterization) = prediction_type: v_prediction."""
    clip_skip: int | None = Field(None, ge=1, le=12)
    """Condition on the N-th hidden state from the text encoder's end, through its final layer norm
    (kohya/A1111's clip skip; 2 = the penultimate layer). SD 1.x/2.x; SDXL always uses the penultimate."""
    max_token_length: int | None = None
    """Caption tokens beyond 75 (kohya's --max_token_length): 75-token windows, each with its own start
    and end token, encoded one by one and joined."""
    noise_offset: float | None = Field(None, ge=0)
    """Add a per-channel constant to the noise, times this (offset noise: darker darks, brighter brights)."""
    noise_offset_random_strength: bool = False
    """Draw the offset's strength uniformly in [0, noise_offset) each step."""
    adaptive_noise_scale: float | None = None
    """Add |latent channel mean| x this to noise_offset (needs noise_offset)."""
    multires_noise_iterations: int | None = Field(None, ge=1)
    """Multi-resolution (pyramid) noise: this many coarser noise layers added."""
    multires_noise_discount: float = Field(0.3, gt=0, le=1)
    """Weight of each coarser multires layer (kohya's default 0.3)."""
    min_timestep: int | None = Field(None, ge=0, le=999)
    """Lowest training timestep (default 0)."""
    max_timestep: int | None = Field(None, ge=1, le=1000)
    """Training timesteps are drawn below this (default: the scheduler's 1000)."""
    ip_noise_gamma: float | None = Field(None, ge=0)
    """Input perturbation: noise the latents with noise + gamma x fresh noise, but predict the first."""
    ip_noise_gamma_random_strength: bool = False
    """Draw the perturbation's strength uniformly in [0, ip_noise_gamma) each step."""
    zero_terminal_snr: bool = False
    """Rescale the training noise schedule so that the last timestep is pure noise (arXiv:2305.08891)."""
    scale_v_pred_loss_like_noise_pred: bool = False
    """v-prediction only: weight each sample's loss by snr/(snr+1), as an epsilon loss would weigh."""
    debiased_estimation_loss: bool = False
    """Weight each sample's loss by 1/sqrt(snr) (epsilon) or 1/(snr+1) (v-prediction)."""
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = "l2"
    """The per-element error: squared (l2), absolute (l1), or pseudo-Huber / smooth-L1 with huber_c."""
    huber_c: float = Field(0.1, gt=0)
    """Pseudo-Huber threshold (or its value at the last timestep, with huber_schedule exponential/snr)."""
    huber_schedule: Literal["constant", "exponential", "snr"] = "snr"
    """How huber_c varies with the timestep (kohya's default snr)."""
    huber_scale: float = Field(1.0, gt=0)
    """Multiplies huber_c for the constant and exponential schedules."""

    # ---- run management: saving, sampling, regularization (issue 18) ----
    save_state: bool = True
    """Write a resumable checkpoint (the training state) at each save; false: the embedding alone, as kohya
    does without --save_state (stopping early still leaves a checkpoint)."""
    save_state_on_train_end: bool = False
    """Also write a resumable checkpoint when training ends (kohya's `<name>-state`; in the kohya layout
    save_state writes it too, as kohya does)."""
    save_last_n_epochs: int | None = Field(None, ge=1)
    """Keep only the embeddings of the last N epoch saves (kohya)."""
    save_last_n_epochs_state: int | None = Field(None, ge=1)
    """Keep only the checkpoints of the last N epoch saves (default: save_last_n_epochs)."""
    save_last_n_steps: int | None = Field(None, ge=1)
    """Keep only the step saves' embeddings of the last N steps (kohya)."""
    save_last_n_steps_state: int | None = Field(None, ge=1)
    """Keep only the step checkpoints of the last N steps (default: save_last_n_steps)."""
    prior_loss_weight: float = Field(1.0, ge=0)
    """Loss weight of regularization pictures (data_loader.reg_data_dir, or is_reg subsets of a kohya .toml)."""
    sample_prompts: str | None = None
    """kohya's sample prompt file (.txt lines with --n --w --h --s --l --d, or .toml/.json); the pictures go to
    `sample/` in the run folder."""
    sample_every_n_steps: int | None = Field(None, gt=0)
    sample_every_n_epochs: int | None = Field(None, gt=0)
    """Sample every N epochs (then sample_every_n_steps is ignored, as in kohya)."""
    sample_at_first: bool = False
    sample_sampler: SampleSampler = "ddim"
    """The sampler of sample_prompts pictures (kohya's names; a prompt's own --ss wins)."""
    vae_model: str | None = None
    """A VAE to use instead of the model's own: a diffusers folder, a single .safetensors/.ckpt file, or a hub
    id, e.g. madebyollin/sdxl-vae-fp16-fix (SDXL's own VAE overflows to NaN in fp16)."""

    data_loader: TextualInversionSDDataLoaderConfig

    @field_validator("optimizer", mode="before")
    @classmethod
    def _adamw_by_default(cls, value: Any) -> Any:
        if isinstance(value, dict):  # kohya writes its optimizer names in any case
            return {**value, "optimizer_type": canonical_optimizer_name(str(value.get("optimizer_type", "AdamW")))}
        return value

    @field_validator("lr_warmup_steps", mode="before")
    @classmethod
    def _warmup_percent(cls, value: Any) -> Any:
        # kohya also takes the warm-up fraction as a percentage ("5%")
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                pass
        return value

    @model_validator(mode="before")
    @classmethod
    def _a1111_rate_schedule(cls, data: Any) -> Any:
        from tiforge.config.schedule_schema import step_schedule_in_learning_rate

        return step_schedule_in_learning_rate(data)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false; the user meant "no".
        return "no" if value is False else value

    @field_validator("placeholder_token")
    @classmethod
    def _placeholder_is_one_word(cls, token: str) -> str:
        if not token.strip():
            raise ValueError("placeholder_token is empty; choose a unique word such as '<my-concept>'")
        if any(ch.isspace() for ch in token):
            raise ValueError(f"placeholder_token {token!r} contains whitespace; use one word such as '<my-concept>'")
        return token

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "SdTextualInversionConfig":
        problems: list[str] = []
        init = {
            "initializer_token": self.initializer_token,
            "initial_embedding_file": self.initial_embedding_file,
            "initial_phrase": self.initial_phrase,
        }
        chosen = [k for k, v in init.items() if v is not None]
        if len(chosen) != 1:
            problems.append(
                "initializer_token / initial_embedding_file / initial_phrase: set exactly one"
                + (f" (got {', '.join(chosen)})" if chosen else " (none is set)")
            )
        for a, b, what in [
            ("max_train_steps", "max_train_epochs", "how long to train"),
            ("save_every_n_steps", "save_every_n_epochs", "how often to save"),
            ("validate_every_n_steps", "validate_every_n_epochs", "how often to validate"),
        ]:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                problems.append(f"{a} / {b}: both are set; set only one to say {what}")
        if self.max_train_steps is None and self.max_train_epochs is None:
            problems.append("max_train_steps / max_train_epochs: set one of them to say how long to train")
        if self.negative_validation_prompts is not None and len(self.negative_validation_prompts) != len(
            self.validation_prompts
        ):
            problems.append(
                f"negative_validation_prompts: has {len(self.negative_validation_prompts)} entries but "
                f"validation_prompts has {len(self.validation_prompts)}; give one negative prompt per prompt"
            )
        dl = self.data_loader
        if self.cache_vae_outputs and ((not dl.center_crop and not dl.squash) or dl.color_aug):
            on = [n for n, v in [("center_crop: false", not dl.center_crop and not dl.squash),
                                 ("color_aug: true", dl.color_aug)] if v]
            problems.append(
                "cache_vae_outputs: cannot cache VAE outputs while a random augmentation is on "
                f"(data_loader.{' and data_loader.'.join(on)}); every epoch would need new latents. "
                "Turn the augmentation off or set cache_vae_outputs: false"
            )
        chosen_templates = [n for n in ("caption_preset", "caption_templates", "caption_templates_file")
                            if getattr(dl, n) is not None]
        if len(chosen_templates) > 1:
            problems.append(f"data_loader.{' / data_loader.'.join(chosen_templates)}: set only one")
        has_templates = dl.uses_templates
        if dl.dataset.type == "IMAGE_DIR_DATASET" and not has_templates:
            problems.append(
                "data_loader.caption_preset: an IMAGE_DIR_DATASET has no captions, so set caption_preset "
                "(object or style), caption_templates or caption_templates_file"
            )
        if dl.keep_original_captions and (dl.dataset.type == "IMAGE_DIR_DATASET" or not has_templates):
            problems.append(
                "data_loader.keep_original_captions: only applies to a dataset with captions together "
                "with caption_preset or caption_templates"
            )
        if self.cache_vae_outputs_to_disk and self.cache_vae_outputs is False:
            problems.append("cache_vae_outputs_to_disk: needs cache_vae_outputs: true (or unset)")
        if self.save_format == "a1111" and self.save_model_as == "safetensors":
            problems.append(
                "save_format / save_model_as: the a1111 layout (string_to_param) cannot be stored in safetensors; "
                "set save_model_as: pt, or save_format: diffusers or kohya"
            )
        if self.use_masks and dl.dataset.type == "HF_HUB_IMAGE_CAPTION_DATASET" and not dl.dataset.mask_column:
            problems.append("use_masks: set data_loader.dataset.mask_column to the dataset's mask column")
        problems += self._run_management_problems()
        problems += self._family_problems()
        problems += self._kohya_conditioning_problems()
        problems += self._schedule_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _family_problems(self) -> list[str]:
        return []

    def _kohya_conditioning_problems(self) -> list[str]:
        from tiforge.config.kohya_conditioning_rules import conditioning_problems

        return conditioning_problems(self)

    def _run_management_problems(self) -> list[str]:
        from tiforge.config.run_management_checks import run_management_problems

        return run_management_problems(self)

    def _schedule_problems(self) -> list[str]:
        from tiforge.config.schedule_schema import schedule_problems

        return schedule_problems(self)

    # -- derived values used by the recipe ------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        return self.optimizer.learning_rate

    @property
    def is_sdxl(self) -> bool:
        return False


class SdxlTextualInversionConfig(SdTextualInversionConfig):
    """SDXL: the same schema, two text encoders, and invoke-training's VAE overrides."""

    type: Literal["SDXL_TEXTUAL_INVERSION", "TEXTUAL_INVERSION_SDXL"] = "SDXL_TEXTUAL_INVERSION"
    vae_dtype: Literal["float16", "bfloat16", "float32"] | None = None
    """The VAE's dtype, overriding weight_dtype for it: float32 keeps SDXL's own VAE finite."""
    save_format: Literal["diffusers", "a1111", "kohya"] = "kohya"
    """SDXL embeddings are stored as clip_l + clip_g (kohya's layout), which kohya, A1111, ComfyUI,
    InvokeAI and diffusers read."""

    def _family_problems(self) -> list[str]:
        if self.save_format != "kohya":
            return [
                f"save_format: {self.save_format}: an SDXL embedding has clip_l and clip_g vectors, which only the "
                "kohya layout holds; it is the one kohya, A1111, ComfyUI, InvokeAI and diffusers read "
                "(diffusers: load_textual_inversion once per text encoder). Set save_format: kohya"
            ]
        return []

    @property
    def is_sdxl(self) -> bool:
        return True


TrainingConfig = Union[SdTextualInversionConfig, SdxlTextualInversionConfig]
SD_TYPES = ("SD_TEXTUAL_INVERSION", "TEXTUAL_INVERSION_SD")
SDXL_TYPES = ("SDXL_TEXTUAL_INVERSION", "TEXTUAL_INVERSION_SDXL")


def config_class(pipeline_type: Any) -> type[SdTextualInversionConfig]:
    if pipeline_type is None or pipeline_type in SD_TYPES:
        return SdTextualInversionConfig
    if pipeline_type in SDXL_TYPES:
        return SdxlTextualInversionConfig
    raise ConfigError(
        f"type: {pipeline_type!r} is not a textual-inversion pipeline; use SD_TEXTUAL_INVERSION (SD 1.x/2.x) or "
        "SDXL_TEXTUAL_INVERSION (SDXL)"
    )


# Where users coming from other tools usually put these keys, for "did you mean" hints.
