"""Flags of kohya-ss sd-scripts' `train_textual_inversion.py` and `sdxl_train_textual_inversion.py`."""

from __future__ import annotations

from typing import Any, Callable

from tiforge.config.flag_spec import Flag, Overrides, ignored, set_to

NAME = "kohya"
TITLE = "kohya-ss sd-scripts (train_textual_inversion.py / sdxl_train_textual_inversion.py)"


def _weights(value: Any, out: Overrides) -> None:
    out["initial_embedding_file"] = value
    out["initializer_token"] = None  # --weights continues training; the init word no longer applies


def _dataset_config(value: Any, out: Overrides) -> None:
    out["data_loader.dataset"] = {"type": "KOHYA_DATASET_CONFIG", "config_path": value}


def _cache_to_disk(value: Any, out: Overrides) -> None:
    out["cache_vae_outputs"] = bool(value)
    out["cache_vae_outputs_to_disk"] = bool(value)


def _bucket(key: str | None) -> Callable[[Any, Overrides], None]:
    # the rest of the bucket config is filled in once all flags are read (config.flags)
    def apply(value: Any, out: Overrides) -> None:
        if key is None:  # --enable_bucket
            if value:
                out.setdefault("data_loader.aspect_ratio_buckets.start_dim", 256)
        else:
            out[f"data_loader.aspect_ratio_buckets.{key}"] = value

    return apply


def _shuffle_caption(value: Any, out: Overrides) -> None:
    if value:
        out["data_loader.shuffle_caption_delimiter"] = ","


def _random_crop(value: Any, out: Overrides) -> None:
    out["data_loader.center_crop"] = not value


FLAGS: dict[str, Flag] = {
    # run management and data (issue 18c)
    "save_state": Flag("save_state", kind="bool",
                       help="write a resumable <name>-stepN-state / <name>-N-state folder at each save"),
    "save_state_on_train_end": Flag("save_state_on_train_end", kind="bool",
                                    help="write a resumable <name>-state folder when training ends"),
    "resume": Flag("resume_from_checkpoint", help="continue from a state folder (= resume_from_checkpoint)"),
    "caption_extention": Flag("data_loader.dataset.caption_extension", help="kohya's old spelling of --caption_extension"),
    "save_last_n_epochs": Flag("save_last_n_epochs", help="keep the embeddings of the last N epoch saves"),
    "save_last_n_epochs_state": Flag("save_last_n_epochs_state", help="keep the state folders of the last N epoch saves"),
    "save_last_n_steps": Flag("save_last_n_steps", help="keep the step saves of the last N steps"),
    "save_last_n_steps_state": Flag("save_last_n_steps_state", help="keep the step state folders of the last N steps"),
    "prior_loss_weight": Flag("prior_loss_weight", help="loss weight of the regularization pictures (--reg_data_dir)"),
    "reg_data_dir": Flag("data_loader.reg_data_dir",
                         help="regularization pictures in <repeats>_<class> folders, trained with their class captions"),
    "sample_prompts": Flag("sample_prompts", help="a prompt file (.txt/.toml/.json) to draw sample pictures from"),
    "sample_every_n_steps": Flag("sample_every_n_steps", help="sample pictures every N steps"),
    "sample_every_n_epochs": Flag("sample_every_n_epochs", help="sample pictures every N epochs (wins over steps)"),
    "sample_at_first": Flag("sample_at_first", kind="bool", help="sample pictures before the first step"),
    "sample_sampler": Flag("sample_sampler", help="the sampler for sample pictures (ddim, euler_a, dpmsolver++, ...)"),
    "vae": Flag("vae_model", help="a VAE folder or single file to use instead of the model's (= vae_model)"),
    "lowram": Flag(None, kind="bool", apply=ignored,
                   note="--lowram: tiforge loads the frozen model once, straight into its training dtype, and "
                        "holds only the placeholder vectors' optimizer state; there is nothing more to save",
                   help="accepted; model loading already keeps one copy in memory"),
    "persistent_data_loader_workers": Flag(None, kind="bool", apply=ignored,
                                           note="--persistent_data_loader_workers: tiforge's data-loader workers "
                                                "always live for the whole run",
                                           help="accepted; the data-loader workers always persist"),
    "token_string": Flag("placeholder_token", help="= placeholder_token"),
    "init_word": Flag("initializer_token", help="= initializer_token"),
    "num_vectors_per_token": Flag("num_vectors", help="= num_vectors"),
    "weights": Flag(None, apply=_weights, help="continue from this embedding (= initial_embedding_file)"),
    "use_object_template": Flag(None, kind="bool", apply=set_to("data_loader.caption_preset", "object"),
                                help="object caption templates (= caption_preset object)"),
    "use_style_template": Flag(None, kind="bool", apply=set_to("data_loader.caption_preset", "style"),
                               help="style caption templates (= caption_preset style)"),
    "cache_latents": Flag("cache_vae_outputs", kind="bool", help="= cache_vae_outputs"),
    "sdpa": Flag(None, kind="bool", apply=set_to("xformers", False),
                 note="--sdpa: PyTorch's scaled-dot-product attention is tiforge's default",
                 help="PyTorch scaled-dot-product attention (the default)"),
    "mem_eff_attn": Flag(None, kind="bool", apply=set_to("xformers", False),
                         note="--mem_eff_attn: using PyTorch's memory-efficient scaled-dot-product attention",
                         help="PyTorch memory-efficient attention (the default)"),
    "dynamo_backend": Flag(None, apply=ignored,
                           note="--dynamo_backend: tiforge's torch_compile uses torch's default (inductor) backend",
                           help="accepted; --torch_compile compiles with inductor"),
    "max_data_loader_n_workers": Flag("dataloader_num_workers", help="= dataloader_num_workers"),
    "log_with": Flag("report_to", help="= report_to"),
    "dataset_config": Flag(None, apply=_dataset_config, help="a kohya dataset .toml"),
    "cache_latents_to_disk": Flag(None, kind="bool", apply=_cache_to_disk, help="= cache_vae_outputs_to_disk"),
    "enable_bucket": Flag(None, kind="bool", apply=_bucket(None), help="aspect-ratio buckets"),
    "min_bucket_reso": Flag(None, apply=_bucket("start_dim"), help="smallest bucket side"),
    "max_bucket_reso": Flag(None, apply=_bucket("end_dim"), help="largest bucket side"),
    "bucket_reso_steps": Flag(None, apply=_bucket("divisible_by"), help="bucket sides are multiples of this"),
    "bucket_no_upscale": Flag(None, kind="bool", apply=_bucket("no_upscale"),
                              help="never enlarge a picture to fit a bucket"),
    "flip_aug": Flag("data_loader.random_flip", kind="bool", help="= random_flip"),
    "random_crop": Flag(None, kind="bool", apply=_random_crop, help="random instead of centre crops"),
    "shuffle_caption": Flag(None, kind="bool", apply=_shuffle_caption, help="shuffle comma-separated caption tags"),
    "masked_loss": Flag("use_masks", kind="bool", help="= use_masks"),
    "debug_dataset": Flag(None, kind="bool", apply=set_to("debug_dataset", True),
                          note="--debug_dataset: showing the data as it would be trained, then stopping",
                          help="show the data as it would be trained, then stop"),
    # with masks on, a picture's alpha channel is its mask
    "alpha_mask": Flag("use_masks", kind="bool", help="use each picture's alpha channel as its mask (= use_masks)"),
    # sdxl_train_textual_inversion.py
    "no_half_vae": Flag(None, kind="bool", apply=set_to("vae_dtype", "float32"),
                        help="keep the SDXL VAE in float32 (= vae_dtype float32)"),
    # conditioning, noise and loss (issue 18a): --v2, --v_parameterization, --clip_skip,
    # --max_token_length, the noise/timestep/loss options are config fields under kohya's own names
    # (config.schema), so their flags need no entry here; they say nothing about which tool's
    # command line it is.
}

REFUSED: dict[str, str] = {
    "in_json": "fine-tuning metadata .json files are not read; use --train_data_dir with caption files, or a "
               "JSONL dataset (data_loader.dataset.type: IMAGE_CAPTION_JSONL_DATASET)",
    "cache_text_encoder_outputs": "textual inversion trains through the text encoders, so their outputs change "
                                  "every step and cannot be cached",
}

REQUIRED = {"model": "--pretrained_model_name_or_path", "base_output_dir": "--output_dir",
            "placeholder_token": "--token_string", "data_loader": "--train_data_dir or --dataset_config"}

# config-field flags only kohya's command lines use (its own names for them are the fields' names)
_FIELD_NAMES_OF_KOHYA = {"output_name", "save_model_as"}


def recognises(names: set[str]) -> bool:
    return bool(names & (set(FLAGS) | _FIELD_NAMES_OF_KOHYA))


# kohya's argparse defaults (library/train_util.py, train_textual_inversion.py) where they differ from
# tiforge's; they apply to a command line in its flags, and the user's own values always win.
DEFAULTS: dict[str, Any] = {
    "train_batch_size": 1,
    "optimizer.learning_rate": 2e-6,
    "max_train_steps": 1600,
    "max_grad_norm": 1.0,
    "min_snr_gamma": None,
    "save_model_as": "pt",
    "save_state": False,
    "data_loader.dataset.caption_extension": ".caption",
}
DEFAULTS_UNLESS: dict[str, tuple[str, ...]] = {
    "max_train_steps": ("max_train_epochs",),
    # a dataset .toml, or templates in place of caption files
    "data_loader.dataset.caption_extension": ("data_loader.dataset.config_path", "data_loader.caption_preset"),
}


# Every flag name of kohya's textual-inversion scripts (train_textual_inversion.py and the library
# argument groups it adds). A name here that tiforge does not take is said to be kohya's, not unknown,
# and gets no "did you mean" pointing at an unrelated flag that merely looks alike.
KNOWN_NAMES = frozenset("""
    adaptive_noise_scale alpha_mask async_upload bucket_no_upscale bucket_reso_steps cache_info cache_latents
    cache_latents_to_disk cache_text_encoder_outputs cache_text_encoder_outputs_to_disk
    caption_dropout_every_n_epochs caption_dropout_rate caption_extension caption_extention caption_prefix
    caption_separator caption_suffix caption_tag_dropout_rate ckpt clip_skip color_aug conditioning_data_dir
    config_file console_log_file console_log_level console_log_simple dataset_class dataset_config
    dataset_repeats ddp_gradient_as_bucket_view ddp_static_graph ddp_timeout debiased_estimation_loss
    debug_dataset deepspeed disable_mmap_load_safetensors dynamo_backend enable_bucket enable_wildcard
    face_crop_aug_range flip_aug fp16_master_weights_and_gradients fp8_base full_bf16 full_fp16
    fused_backward_pass gradient_accumulation_steps gradient_checkpointing highvram huber_c huber_scale
    huber_schedule huggingface_path_in_repo huggingface_repo_id huggingface_repo_type
    huggingface_repo_visibility huggingface_token in_json init_word ip_noise_gamma
    ip_noise_gamma_random_strength keep_tokens keep_tokens_separator learning_rate log_config log_prefix
    log_tracker_config log_tracker_name log_with logging_dir loss_type lowram lr_decay_steps lr_scheduler
    lr_scheduler_args lr_scheduler_min_lr_ratio lr_scheduler_num_cycles lr_scheduler_power
    lr_scheduler_timescale lr_scheduler_type lr_warmup_steps masked_loss max_bucket_reso
    max_data_loader_n_workers max_grad_norm max_timestep max_token_length max_train_epochs max_train_steps
    mem_eff_attn metadata_author metadata_description metadata_is_negative_embedding metadata_license
    metadata_merged_from metadata_preprocessor metadata_tags metadata_thumbnail metadata_title
    metadata_trigger_phrase metadata_usage_hint min_bucket_reso min_snr_gamma min_timestep mixed_precision
    multires_noise_discount multires_noise_iterations no_half_vae noise_offset noise_offset_random_strength
    num_vectors_per_token offload_optimizer_device offload_optimizer_nvme_path offload_param_device
    offload_param_nvme_path optimizer_args optimizer_type output_config output_dir output_name
    persistent_data_loader_workers pretrained_model_name_or_path prior_loss_weight random_crop reg_data_dir
    resize_interpolation resolution resume resume_from_huggingface sample_at_first sample_every_n_epochs
    sample_every_n_steps sample_prompts sample_sampler save_every_n_epochs save_every_n_steps save_last_n_epochs
    save_last_n_epochs_state save_last_n_steps save_last_n_steps_state save_model_as save_n_epoch_ratio
    save_precision save_state save_state_on_train_end save_state_to_huggingface
    scale_v_pred_loss_like_noise_pred sdpa secondary_separator seed shuffle_caption skip_cache_check
    token_string token_warmup_min token_warmup_step tokenizer_cache_dir torch_compile train_batch_size
    train_data_dir use_8bit_adam use_lion_optimizer use_object_template use_style_template v2 v_parameterization
    v_pred_like_loss vae vae_batch_size wandb_api_key wandb_run_name weighted_captions weights xformers
    zero3_init_flag zero3_save_16bit_model zero_stage zero_terminal_snr
""".split())


from tiforge.config.peer_flags.kohya_optimizer_flags import OPTIMIZER_FLAGS  # noqa: E402  (issue 18b)

FLAGS.update(OPTIMIZER_FLAGS)
