"""Flags of kohya-ss sd-scripts' `train_textual_inversion.py` and `sdxl_train_textual_inversion.py`."""

from __future__ import annotations

from typing import Any, Callable

from tiforge.config.flag_spec import Flag, Overrides, set_to
from tiforge.config.schema import ConfigError

NAME = "kohya"
TITLE = "kohya-ss sd-scripts (train_textual_inversion.py / sdxl_train_textual_inversion.py)"


def _weights(value: Any, out: Overrides) -> None:
    out["initial_embedding_file"] = value
    out["initializer_token"] = None  # --weights continues training; the init word no longer applies


def _prior_loss_weight(value: Any, out: Overrides) -> None:
    if float(value) != 1.0:
        raise ConfigError(
            f"--prior_loss_weight={value}: textual inversion here trains on the concept's pictures only (no "
            "regularization images), so a prior-loss weight has nothing to weigh; remove it or set it to 1.0"
        )


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
    "max_data_loader_n_workers": Flag("dataloader_num_workers", help="= dataloader_num_workers"),
    "log_with": Flag("report_to", help="= report_to"),
    "prior_loss_weight": Flag(None, apply=_prior_loss_weight, help="only 1.0 (no regularization images in TI)"),
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
}

REFUSED: dict[str, str] = {
    "in_json": "fine-tuning metadata .json files are not read; use --train_data_dir with caption files, or a "
               "JSONL dataset (data_loader.dataset.type: IMAGE_CAPTION_JSONL_DATASET)",
    "reg_data_dir": "regularization images have no use in textual inversion (only the concept's pictures train it)",
    "v2": "the model's family is read from the model itself; remove --v2",
    "v_parameterization": "use --prediction_type v_prediction",
    "cache_text_encoder_outputs": "textual inversion trains through the text encoders, so their outputs change "
                                  "every step and cannot be cached",
}

REQUIRED = {"model": "--pretrained_model_name_or_path", "base_output_dir": "--output_dir",
            "placeholder_token": "--token_string", "data_loader": "--train_data_dir or --dataset_config"}

# config-field flags only kohya's command lines use (its own names for them are the fields' names)
_FIELD_NAMES_OF_KOHYA = {"output_name", "save_model_as"}


def recognises(names: set[str]) -> bool:
    return bool(names & (set(FLAGS) | _FIELD_NAMES_OF_KOHYA))


from tiforge.config.peer_flags.kohya_optimizer_flags import OPTIMIZER_FLAGS  # noqa: E402  (issue 18b)

FLAGS.update(OPTIMIZER_FLAGS)
