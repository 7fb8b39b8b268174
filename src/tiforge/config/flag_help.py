"""One line of help per `tiforge train` flag, grouped by where the name comes from: tiforge's own
config fields, the diffusers example script, InvokeAI's invokeai-ti, and kohya-ss sd-scripts.

Kept apart from cli_flags.py (which says what each flag does) so that help texts can be edited
without touching the flag table; a test checks that every known flag has a line here.
"""

from __future__ import annotations

FIELDS = "config fields (also YAML keys; nested ones by their last name)"
DIFFUSERS = "diffusers example (textual_inversion.py / textual_inversion_sdxl.py)"
INVOKEAI = "InvokeAI invokeai-ti"
KOHYA = "kohya-ss sd-scripts (train_textual_inversion.py / sdxl_train_textual_inversion.py)"
GROUPS = (FIELDS, DIFFUSERS, INVOKEAI, KOHYA)

FLAG_HELP: dict[str, tuple[str, str]] = {
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
    "lr_scheduler": (FIELDS, "constant, linear, cosine, cosine_with_restarts, polynomial, ..."),
    "lr_warmup_steps": (FIELDS, "steps of linear warm-up"),
    "lr_num_cycles": (FIELDS, "cycles of cosine_with_restarts"),
    "lr_power": (FIELDS, "power of the polynomial schedule"),
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
    "vae_model": (FIELDS, "SDXL: a replacement VAE (folder or hub id)"),
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
    "optimizer_type": (FIELDS, "AdamW, AdamW8bit or Prodigy"),
    "learning_rate": (FIELDS, "optimizer learning rate"),
    "weight_decay": (FIELDS, "optimizer weight decay"),
    "beta1": (FIELDS, "AdamW beta1"),
    "beta2": (FIELDS, "AdamW beta2"),
    "epsilon": (FIELDS, "AdamW epsilon"),
    "dataset_dir": (FIELDS, "folder of training pictures"),
    "keep_in_memory": (FIELDS, "keep decoded pictures in memory"),
    "caption_extension": (FIELDS, "extension of caption files (.txt)"),
    # diffusers examples/textual_inversion
    "pretrained_model_name_or_path": (DIFFUSERS, "= model"),
    "variant": (DIFFUSERS, "= hf_variant"),
    "train_data_dir": (DIFFUSERS, "folder of training pictures (= dataset_dir)"),
    "learnable_property": (DIFFUSERS, "object or style (= caption_preset)"),
    "output_dir": (DIFFUSERS, "= base_output_dir; files go into it as the tool whose flags you use names them"),
    "num_train_epochs": (DIFFUSERS, "= max_train_epochs"),
    "checkpointing_steps": (DIFFUSERS, "= save_every_n_steps"),
    "save_steps": (DIFFUSERS, "= save_embedding_every_n_steps (learned_embeds-steps-N)"),
    "checkpoints_total_limit": (DIFFUSERS, "= max_checkpoints"),
    "validation_prompt": (DIFFUSERS, "= validation_prompts (repeatable)"),
    "num_validation_images": (DIFFUSERS, "= num_validation_images_per_prompt"),
    "validation_steps": (DIFFUSERS, "= validate_every_n_steps"),
    "validation_epochs": (DIFFUSERS, "= validate_every_n_epochs"),
    "adam_beta1": (DIFFUSERS, "= beta1"),
    "adam_beta2": (DIFFUSERS, "= beta2"),
    "adam_weight_decay": (DIFFUSERS, "= weight_decay"),
    "adam_epsilon": (DIFFUSERS, "= epsilon"),
    "enable_xformers_memory_efficient_attention": (DIFFUSERS, "= xformers"),
    "no_safe_serialization": (DIFFUSERS, "save a .bin instead of .safetensors"),
    "only_save_embeds": (DIFFUSERS, "accepted; tiforge only ever saves the embedding"),
    "local_rank": (DIFFUSERS, "set by torch.distributed launchers; ignored"),
    "sdxl": (DIFFUSERS, "train SDXL (= type SDXL_TEXTUAL_INVERSION); kohya's SDXL script too"),
    # InvokeAI invokeai-ti
    "root": (INVOKEAI, "InvokeAI root: install the embedding there (= install_embeddings_root)"),
    "root_dir": (INVOKEAI, "= root"),
    # kohya-ss sd-scripts
    "token_string": (KOHYA, "= placeholder_token"),
    "init_word": (KOHYA, "= initializer_token"),
    "num_vectors_per_token": (KOHYA, "= num_vectors"),
    "weights": (KOHYA, "continue from this embedding (= initial_embedding_file)"),
    "use_object_template": (KOHYA, "object caption templates (= caption_preset object)"),
    "use_style_template": (KOHYA, "style caption templates (= caption_preset style)"),
    "cache_latents": (KOHYA, "= cache_vae_outputs"),
    "sdpa": (KOHYA, "PyTorch scaled-dot-product attention (the default)"),
    "mem_eff_attn": (KOHYA, "PyTorch memory-efficient attention (the default)"),
    "max_data_loader_n_workers": (KOHYA, "= dataloader_num_workers"),
    "log_with": (KOHYA, "= report_to"),
    "prior_loss_weight": (KOHYA, "only 1.0 (no regularization images in TI)"),
    "dataset_config": (KOHYA, "a kohya dataset .toml"),
    "cache_latents_to_disk": (KOHYA, "= cache_vae_outputs_to_disk"),
    "enable_bucket": (KOHYA, "aspect-ratio buckets"),
    "min_bucket_reso": (KOHYA, "smallest bucket side"),
    "max_bucket_reso": (KOHYA, "largest bucket side"),
    "bucket_reso_steps": (KOHYA, "bucket sides are multiples of this"),
    "bucket_no_upscale": (KOHYA, "never enlarge a picture to fit a bucket"),
    "flip_aug": (KOHYA, "= random_flip"),
    "random_crop": (KOHYA, "random instead of centre crops"),
    "shuffle_caption": (KOHYA, "shuffle comma-separated caption tags"),
    "masked_loss": (KOHYA, "= use_masks"),
    "debug_dataset": (KOHYA, "show the data as it would be trained, then stop"),
    "alpha_mask": (KOHYA, "use each picture's alpha channel as its mask (= use_masks)"),
    "no_half_vae": (KOHYA, "keep the SDXL VAE in float32 (= vae_dtype float32)"),
}
# Names that both the diffusers and kohya scripts use (e.g. --resolution, --learning_rate,
# --output_dir) are listed once, under the config field or the first tool that has them.


def grouped_flag_help(names: list[str]) -> str:
    """The epilog of `tiforge train --help`: every flag, one line each, under its group."""
    width = 32  # longer names push their text right rather than widening every line
    lines = []
    for group in GROUPS:
        members = [n for n in names if FLAG_HELP.get(n, (FIELDS, ""))[0] == group]
        if not members:
            continue
        lines += ["", f"{group}:"]
        lines += [f"{'  --' + n:<{width - 2}}  {FLAG_HELP.get(n, (group, ''))[1]}" for n in members]
    return "\n".join(lines)


# The flag spelling of each required field, per tool, for "missing field" messages.
REQUIRED_FLAG = {
    "tiforge": {"model": "--model", "base_output_dir": "--base_output_dir",
                "placeholder_token": "--placeholder_token", "data_loader": "--dataset_dir"},
    "diffusers": {"model": "--pretrained_model_name_or_path", "base_output_dir": "--output_dir",
                  "placeholder_token": "--placeholder_token", "data_loader": "--train_data_dir"},
    "invokeai": {"model": "--model", "base_output_dir": "--output_dir",
                 "placeholder_token": "--placeholder_token", "data_loader": "--train_data_dir"},
    "kohya": {"model": "--pretrained_model_name_or_path", "base_output_dir": "--output_dir",
              "placeholder_token": "--token_string", "data_loader": "--train_data_dir or --dataset_config"},
}


def flag_dialect(flag_names: list[str]) -> str:
    """Which tool's spelling a command line uses, judged by the other tools' names in it."""
    groups = {FLAG_HELP.get(n, (FIELDS, ""))[0] for n in flag_names}
    if KOHYA in groups:
        return "kohya"
    if "pretrained_model_name_or_path" in flag_names or DIFFUSERS in groups and "model" not in flag_names:
        return "diffusers"
    if INVOKEAI in groups or "model" in flag_names and "output_dir" in flag_names:
        return "invokeai"
    return "tiforge"


def missing_required(data: dict, argv: list[str]) -> list[str]:
    """`--pretrained_model_name_or_path (model) is required`, in the spelling of the command line used."""
    names = [a[2:].partition("=")[0].replace("-", "_") for a in argv if a.startswith("--")]
    spelling = REQUIRED_FLAG[flag_dialect(names)]
    return [f"{flag} ({field}) is required" for field, flag in spelling.items() if data.get(field) in (None, "")]
