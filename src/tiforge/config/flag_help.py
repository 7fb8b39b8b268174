"""One line of help per `tiforge train` flag, grouped by where the name comes from: tiforge's own
config fields (their lines are here), the diffusers example script, InvokeAI's invokeai-ti, and
kohya-ss sd-scripts (their lines are in their flag tables, `config.peer_flags`). A test checks that
every known flag has a line.
"""

from __future__ import annotations

from tiforge.config.peer_flags import HELP_ORDER, dialect_of, tool_of_flag

FIELDS = "config fields (also YAML keys; nested ones by their last name)"
GROUPS = (FIELDS, *(tool.TITLE for tool in HELP_ORDER))

FIELD_HELP: dict[str, tuple[str, str]] = {
    # tiforge's config fields
    "type": (FIELDS, "SD_TEXTUAL_INVERSION (SD 1.x/2.x) or SDXL_TEXTUAL_INVERSION"),
    "seed": (FIELDS, "integer for reproducible runs (null: random, still resumable)"),
    "base_output_dir": (FIELDS, "REQUIRED: where runs go (a timestamped folder per run; see output_layout)"),
    "report_to": (FIELDS, "tensorboard, wandb, comet_ml, all or none"),
    "max_train_steps": (FIELDS, "training length in optimizer steps"),
    "max_train_epochs": (FIELDS, "training length in epochs (instead of max_train_steps)"),
    "save_every_n_steps": (FIELDS, "checkpoint every N steps"),
    "save_every_n_epochs": (FIELDS, "checkpoint every N epochs"),
    "validate_every_n_steps": (FIELDS, "validation images every N steps"),
    "validate_every_n_epochs": (FIELDS, "validation images every N epochs"),
    "model": (FIELDS, "REQUIRED: hub id, diffusers folder or single .safetensors/.ckpt file"),
    "hf_variant": (FIELDS, "hub weight variant, e.g. fp16"),
    "single_file_config": (FIELDS, "local diffusers folder with the configs of a single-file model"),
    "num_vectors": (FIELDS, "vectors learned for the placeholder (1-16 typical)"),
    "placeholder_token": (FIELDS, "REQUIRED: the new word, e.g. <my-cat>"),
    "initializer_token": (FIELDS, "one existing word to start the vectors from"),
    "initial_embedding_file": (FIELDS, "start from (continue) an existing embedding file"),
    "initial_phrase": (FIELDS, "start from several words (one vector per token)"),
    "scale_lr": (FIELDS, "multiply the learning rate by batch x accumulation x processes"),
    "lr_scheduler": (FIELDS, "constant, linear, cosine, cosine_with_restarts, polynomial, constant_with_warmup, "
                             "piecewise_constant, cosine_with_min_lr, adafactor"),
    "lr_warmup_steps": (FIELDS, "steps of linear warm-up (below 1 or 5%: a fraction of the training)"),
    "lr_num_cycles": (FIELDS, "cycles of cosine_with_restarts"),
    "lr_power": (FIELDS, "power of the polynomial schedule"),
    "lr_scheduler_min_lr_ratio": (FIELDS, "cosine_with_min_lr: the lowest rate as a fraction of the learning rate"),
    "lr_scheduler_type": (FIELDS, "a schedule class (torch.optim.lr_scheduler name or module.Class)"),
    "lr_step_schedule": (FIELDS, "A1111's step schedule \"5e-3:100, 1e-3:1000, 1e-5\""),
    "use_bias_correction": (FIELDS, "Prodigy: Adam's bias correction"),
    "safeguard_warmup": (FIELDS, "Prodigy: keep the step size down during warm-up"),
    "min_snr_gamma": (FIELDS, "min-SNR loss weighting gamma (null: off)"),
    "cache_vae_outputs": (FIELDS, "encode every picture once, before training"),
    "cache_vae_outputs_to_disk": (FIELDS, "keep those latents on disk, reused by later runs"),
    "latent_cache_dir": (FIELDS, "where the disk latent cache lives"),
    "enable_cpu_offload_during_validation": (FIELDS, "offload the model to the CPU while validating"),
    "gradient_accumulation_steps": (FIELDS, "batches per optimizer step"),
    "weight_dtype": (FIELDS, "dtype of the frozen model: float32, float16 or bfloat16"),
    "mixed_precision": (FIELDS, "no, fp16 or bf16 autocast"),
    "xformers": (FIELDS, "xformers attention (CUDA); default is PyTorch SDPA"),
    "gradient_checkpointing": (FIELDS, "recompute activations to save memory"),
    "torch_compile": (FIELDS, "torch.compile the UNet: true, false or auto (only where it pays)"),
    "max_checkpoints": (FIELDS, "keep the newest N checkpoints of each kind"),
    "prediction_type": (FIELDS, "epsilon or v_prediction (default: the model's own)"),
    "max_grad_norm": (FIELDS, "clip the gradient norm to this value"),
    "validation_prompts": (FIELDS, "a validation prompt (repeat the flag for several)"),
    "negative_validation_prompts": (FIELDS, "a negative prompt per validation prompt (repeatable)"),
    "num_validation_images_per_prompt": (FIELDS, "images per validation prompt"),
    "num_validation_inference_steps": (FIELDS, "sampler steps per validation image"),
    "validation_guidance_scale": (FIELDS, "classifier-free guidance of validation images"),
    "train_batch_size": (FIELDS, "pictures per batch"),
    "use_masks": (FIELDS, "train only where a mask (or alpha channel) is white"),
    "push_to_hub": (FIELDS, "upload the final embedding to the Hugging Face hub"),
    "hub_model_id": (FIELDS, "hub repository for push_to_hub"),
    "hub_token": (FIELDS, "hub token for push_to_hub"),
    "output_name": (FIELDS, "file name of the embedding (default: the placeholder)"),
    "allow_tf32": (FIELDS, "TF32 matmuls on Ampere+ GPUs"),
    "save_format": (FIELDS, "layout of the embedding file: diffusers, a1111 or kohya"),
    "save_model_as": (FIELDS, "container: safetensors, pt, bin or ckpt"),
    "save_precision": (FIELDS, "float32, float16 or bfloat16 in the saved file"),
    "install_embeddings_root": (FIELDS, "also install the embedding into this InvokeAI root"),
    "resume_from_checkpoint": (FIELDS, "latest, a checkpoint folder, a run folder or a checkpoint name"),
    "max_nonfinite_steps": (FIELDS, "stop after this many NaN/inf steps in a row"),
    "output_layout": (FIELDS, "run_folders (a timestamped folder per run), or diffusers / invokeai / kohya file names"),
    "save_embedding_every_n_steps": (FIELDS, "also write the embedding alone every N steps"),
    "vae_model": (FIELDS, "a replacement VAE (folder, single file or hub id)"),
    "vae_dtype": (FIELDS, "SDXL: the VAE's own dtype (float32 avoids fp16 overflow)"),
    "caption_preset": (FIELDS, "object or style caption templates"),
    "caption_templates": (FIELDS, "a caption template with {} for the placeholder (repeatable)"),
    "keep_original_captions": (FIELDS, "append the caption files' text to the templates"),
    "resolution": (FIELDS, "training size: 512, or kohya's W,H for a rectangle"),
    "center_crop": (FIELDS, "crop the centre (else a random crop)"),
    "random_flip": (FIELDS, "flip pictures horizontally at random"),
    "shuffle_caption_delimiter": (FIELDS, "shuffle caption parts split on this delimiter"),
    "dataloader_num_workers": (FIELDS, "data-loading processes (default: automatic)"),
    "caption_templates_file": (FIELDS, "an A1111 template file ([name], [filewords])"),
    "keep_tokens": (FIELDS, "leading caption tags kept in place when shuffling"),
    "caption_dropout_rate": (FIELDS, "chance that a caption is dropped"),
    "caption_tag_dropout_rate": (FIELDS, "chance that each tag is dropped"),
    "color_aug": (FIELDS, "random colour changes"),
    "on_bad_image": (FIELDS, "stop or skip when a picture is unreadable"),
    "optimizer_type": (FIELDS, "AdamW, AdamW8bit, Prodigy, Lion, DAdaptAdam, AdaFactor, AdamWScheduleFree, "
                               "... (kohya's names) or module.Class"),
    "learning_rate": (FIELDS, "optimizer learning rate"),
    "weight_decay": (FIELDS, "optimizer weight decay"),
    "beta1": (FIELDS, "AdamW beta1"),
    "beta2": (FIELDS, "AdamW beta2"),
    "epsilon": (FIELDS, "AdamW epsilon"),
    "dataset_dir": (FIELDS, "folder of training pictures"),
    "keep_in_memory": (FIELDS, "keep decoded pictures in memory"),
    "caption_extension": (FIELDS, "extension of caption files (.txt)"),
    # conditioning, noise and loss: kohya's names (issue 18a)
    "v2": (FIELDS, "kohya: the model is SD 2.x (checked against the model)"),
    "v_parameterization": (FIELDS, "kohya: train v-prediction (= prediction_type v_prediction)"),
    "clip_skip": (FIELDS, "condition on the N-th hidden state from the end (2: penultimate), SD 1.x/2.x"),
    "max_token_length": (FIELDS, "75, 150 or 225 caption tokens (75-token windows, kohya's long prompts)"),
    "noise_offset": (FIELDS, "offset noise strength (e.g. 0.05; null: off)"),
    "noise_offset_random_strength": (FIELDS, "random offset strength in [0, noise_offset) per step"),
    "adaptive_noise_scale": (FIELDS, "add |latent mean| x this to noise_offset"),
    "multires_noise_iterations": (FIELDS, "multi-resolution noise layers (e.g. 6; null: off)"),
    "multires_noise_discount": (FIELDS, "weight of each coarser multires layer (0.3)"),
    "min_timestep": (FIELDS, "lowest training timestep (0)"),
    # how the vectors learn (issue 20b)
    "timestep_sampling": (FIELDS, "uniform or logit_normal (most timesteps mid-schedule)"),
    "logit_mean": (FIELDS, "logit_normal timesteps: the normal's mean (0)"),
    "logit_std": (FIELDS, "logit_normal timesteps: the normal's spread (1.0)"),
    "preserve_embedding_norm": (FIELDS, "rescale the vectors to the vocabulary's median norm after each step"),
    "embedding_norm_penalty": (FIELDS, "pull the vectors' norm toward the vocabulary's mean norm (e.g. 0.1)"),
    "directional_update": (FIELDS, "learn only the vectors' direction, norm fixed at the vocabulary's mean"),
    "decay_toward_initializer": (FIELDS, "weight decay pulls the vectors toward their start, not toward 0"),
    "initialize_from_text_encoder_output": (FIELDS, "start from the text encoder's output for the initializer"),
    "max_timestep": (FIELDS, "training timesteps drawn below this (1000)"),
    "ip_noise_gamma": (FIELDS, "input-perturbation noise strength (e.g. 0.1; null: off)"),
    "ip_noise_gamma_random_strength": (FIELDS, "random perturbation strength in [0, ip_noise_gamma) per step"),
    "zero_terminal_snr": (FIELDS, "rescale the training schedule to end in pure noise (use with v-prediction)"),
    "scale_v_pred_loss_like_noise_pred": (FIELDS, "v-prediction: weight the loss by snr/(snr+1)"),
    "debiased_estimation_loss": (FIELDS, "weight the loss by 1/sqrt(snr) (v-prediction: 1/(snr+1))"),
    "loss_type": (FIELDS, "l2, l1, huber or smooth_l1"),
    "huber_c": (FIELDS, "pseudo-Huber threshold (0.1)"),
    "huber_schedule": (FIELDS, "constant, exponential or snr (how huber_c varies with the timestep)"),
    "huber_scale": (FIELDS, "multiplies huber_c (constant and exponential schedules)"),
    # run management, sampling, regularization and the other tools' data handling (issue 18c)
    "repeats": (FIELDS, "each picture this many times per epoch (the diffusers example's --repeats)"),
    "squash": (FIELDS, "resize pictures to the resolution without cropping (the diffusers example's way)"),
    "reg_data_dir": (FIELDS, "regularization pictures in kohya's <repeats>_<class> folders"),
}
# The other tools' flags carry their help lines in their tables (config.peer_flags); names two tools
# share (e.g. --output_dir) are listed once, under the config field or the first tool that has them.


def flag_help(name: str) -> tuple[str, str]:
    """(group, one line of help) of a flag."""
    tool = tool_of_flag(name)
    if tool is not None:
        return tool.TITLE, tool.FLAGS[name].help
    return FIELD_HELP.get(name, (FIELDS, ""))


def grouped_flag_help(names: list[str]) -> str:
    """The epilog of `tiforge train --help`: every flag, one line each, under its group."""
    width = 32  # longer names push their text right rather than widening every line
    lines = []
    for group in GROUPS:
        members = [n for n in names if flag_help(n)[0] == group]
        if not members:
            continue
        lines += ["", f"{group}:"]
        lines += [f"{'  --' + n:<{width - 2}}  {flag_help(n)[1]}" for n in members]
    return "\n".join(lines)


# The flag spelling of each required field when the command line uses tiforge's own names.
_TIFORGE_REQUIRED = {"model": "--model", "base_output_dir": "--base_output_dir",
                     "placeholder_token": "--placeholder_token", "data_loader": "--dataset_dir"}


def missing_required(data: dict, argv: list[str]) -> list[str]:
    """`--pretrained_model_name_or_path (model) is required`, in the spelling of the command line used."""
    names = {a[2:].partition("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    dialect = dialect_of(names)
    spelling = next((t.REQUIRED for t in HELP_ORDER if t.NAME == dialect), _TIFORGE_REQUIRED)
    return [f"{flag} ({field}) is required" for field, flag in spelling.items() if data.get(field) in (None, "")]
