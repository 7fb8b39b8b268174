"""Flags of the diffusers example scripts (`examples/textual_inversion/textual_inversion.py` and
`textual_inversion_sdxl.py`)."""

from __future__ import annotations

from typing import Any

from tiforge.config.flag_spec import Flag, Overrides, ignored, set_to

NAME = "diffusers"
TITLE = "diffusers example (textual_inversion.py / textual_inversion_sdxl.py)"


def _dataset_dir(value: Any, out: Overrides) -> None:
    out["data_loader.dataset.dataset_dir"] = value


def _sdxl(value: Any, out: Overrides) -> None:
    if value:
        out["type"] = "SDXL_TEXTUAL_INVERSION"


FLAGS: dict[str, Flag] = {
    "pretrained_model_name_or_path": Flag("model", help="= model"),
    "variant": Flag("hf_variant", help="= hf_variant"),
    "train_data_dir": Flag(None, apply=_dataset_dir, help="folder of training pictures (= dataset_dir)"),
    "learnable_property": Flag("data_loader.caption_preset", help="object or style (= caption_preset)"),
    # and the output layout of the tool whose flags are used
    "output_dir": Flag("base_output_dir",
                       help="= base_output_dir; files go into it as the tool whose flags you use names them"),
    "num_train_epochs": Flag("max_train_epochs", help="= max_train_epochs"),
    "checkpointing_steps": Flag("save_every_n_steps", help="= save_every_n_steps"),
    "save_steps": Flag("save_embedding_every_n_steps",
                       help="= save_embedding_every_n_steps (learned_embeds-steps-N)"),
    "checkpoints_total_limit": Flag("max_checkpoints", help="= max_checkpoints"),
    "validation_prompt": Flag("validation_prompts", kind="list", help="= validation_prompts (repeatable)"),
    "num_validation_images": Flag("num_validation_images_per_prompt", help="= num_validation_images_per_prompt"),
    "validation_steps": Flag("validate_every_n_steps", help="= validate_every_n_steps"),
    "validation_epochs": Flag("validate_every_n_epochs", help="= validate_every_n_epochs"),
    "adam_beta1": Flag("optimizer.beta1", help="= beta1"),
    "adam_beta2": Flag("optimizer.beta2", help="= beta2"),
    "adam_weight_decay": Flag("optimizer.weight_decay", help="= weight_decay"),
    "adam_epsilon": Flag("optimizer.epsilon", help="= epsilon"),
    "enable_xformers_memory_efficient_attention": Flag("xformers", kind="bool", help="= xformers"),
    "no_safe_serialization": Flag(None, kind="bool", apply=set_to("save_model_as", "bin"),
                                  help="save a .bin instead of .safetensors"),
    "only_save_embeds": Flag(None, kind="bool", apply=ignored,
                             note="--only_save_embeds: tiforge only ever saves the embedding",
                             help="accepted; tiforge only ever saves the embedding"),
    "local_rank": Flag(None, apply=ignored, help="set by torch.distributed launchers; ignored"),
    "repeats": Flag("data_loader.repeats", help="each picture this many times per epoch (default 100, = repeats)"),
    "sdxl": Flag(None, kind="bool", apply=_sdxl,
                 help="train SDXL (= type SDXL_TEXTUAL_INVERSION); kohya's SDXL script too"),
}

REFUSED: dict[str, str] = {
    "logging_dir": "logs always go to <run folder>/logs; choose the run folder's parent with --output_dir",
    "revision": "load a specific revision by downloading it and passing its folder as --pretrained_model_name_or_path",
    "tokenizer_name": "tiforge uses the model's own tokenizer",
    "save_as_full_pipeline": "tiforge saves the embedding only; load it into any pipeline with load_textual_inversion",
}

# The flags every one of its command lines has; invokeai-ti's and kohya's are recognised first.
REQUIRED = {"model": "--pretrained_model_name_or_path", "base_output_dir": "--output_dir",
            "placeholder_token": "--placeholder_token", "data_loader": "--train_data_dir"}


def recognises(names: set[str]) -> bool:
    return bool(names & set(FLAGS)) and ("model" not in names or "pretrained_model_name_or_path" in names)


# What the script does where its command line does not say (its argparse defaults, and what it fixes:
# a flip with p = 0.5, pictures squashed to a square unless --center_crop, the object templates). They
# apply to a command line in its flags; the user's own values always win. `DEFAULTS_UNLESS` names the
# settings that make a default moot.
DEFAULTS: dict[str, Any] = {
    "data_loader.caption_preset": "object",
    "data_loader.random_flip": True,
    "data_loader.squash": True,
    "data_loader.repeats": 100,
    "train_batch_size": 16,
    "optimizer.learning_rate": 1e-4,
    "scale_lr": False,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 500,
    "max_train_steps": 5000,
    "save_every_n_steps": 500,
    "save_embedding_every_n_steps": 500,
    "validate_every_n_steps": 100,
    "min_snr_gamma": None,
    "hf_variant": None,
    "report_to": "tensorboard",
}
DEFAULTS_UNLESS: dict[str, tuple[str, ...]] = {
    "data_loader.squash": ("data_loader.center_crop",),
    "data_loader.caption_preset": ("data_loader.caption_templates", "data_loader.caption_templates_file"),
    "max_train_steps": ("max_train_epochs",),
    "save_every_n_steps": ("save_every_n_epochs",),
    "validate_every_n_steps": ("validate_every_n_epochs",),
}
