"""Command-line flags for every config field, plus the flag names users bring from the diffusers
example script, InvokeAI's `invokeai-ti` and kohya-ss sd-scripts.

Each flag becomes a config override, so a flag-only command line, a YAML file and a mix of both
go through the same validation. Flags that mean nothing to tiforge are refused with what to use
instead; none is silently ignored.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable, get_args, get_origin

from tiforge.config.schema import (AdamWOptimizerConfig, ConfigError, SdxlTextualInversionConfig,
                                   WEIGHT_DTYPE_OF_MIXED_PRECISION)
from tiforge.config.data_schema import ImageCaptionDirDatasetConfig, TextualInversionSDDataLoaderConfig

log = logging.getLogger("tiforge")

Overrides = dict[str, Any]  # dotted config path -> value


@dataclass(frozen=True)
class Flag:
    path: str | None  # dotted config path; None when `apply` does the work
    kind: str = "value"  # "value", "bool" (a bare flag means true), "list" (repeatable)
    apply: Callable[[Any, Overrides], None] | None = None
    note: str | None = None  # said once when the flag is used


def _is_bool(annotation) -> bool:
    return annotation is bool or (get_origin(annotation) is not None and bool in get_args(annotation))


def _is_list(annotation) -> bool:
    return get_origin(annotation) is list or any(get_origin(a) is list for a in get_args(annotation))


def _field_flags() -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    models = [
        ("", SdxlTextualInversionConfig, {"data_loader", "optimizer"}),
        ("data_loader.", TextualInversionSDDataLoaderConfig, {"dataset", "type", "aspect_ratio_buckets"}),
        ("optimizer.", AdamWOptimizerConfig, set()),
        ("data_loader.dataset.", ImageCaptionDirDatasetConfig, {"type"}),
    ]
    for prefix, model, skip in models:
        for name, info in model.model_fields.items():
            if name in skip:
                continue
            kind = "bool" if _is_bool(info.annotation) else "list" if _is_list(info.annotation) else "value"
            flags.setdefault(name, Flag(prefix + name, kind))
    return flags


def _set(path: str, value: Any) -> Callable[[Any, Overrides], None]:
    def apply(_: Any, out: Overrides) -> None:
        out[path] = value

    return apply


def _dataset_dir(value: Any, out: Overrides) -> None:
    out["data_loader.dataset.dataset_dir"] = value


def _resolution(value: Any, out: Overrides) -> None:
    text = str(value)
    out["data_loader.resolution"] = [int(v) for v in text.split(",")][::-1] if "," in text else int(text)


def _precision(value: Any, out: Overrides) -> None:
    out["save_precision"] = {"fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(value, value)


def _weights(value: Any, out: Overrides) -> None:
    out["initial_embedding_file"] = value
    out["initializer_token"] = None  # --weights continues training; the init word no longer applies


def _prior_loss_weight(value: Any, out: Overrides) -> None:
    if float(value) != 1.0:
        raise ConfigError(
            f"--prior_loss_weight={value}: textual inversion here trains on the concept's pictures only (no "
            "regularization images), so a prior-loss weight has nothing to weigh; remove it or set it to 1.0"
        )


def _optimizer_type(value: Any, out: Overrides) -> None:
    out["optimizer.optimizer_type"] = value


def _dataset_config(value: Any, out: Overrides) -> None:
    out["data_loader.dataset"] = {"type": "KOHYA_DATASET_CONFIG", "config_path": value}


def _cache_to_disk(value: Any, out: Overrides) -> None:
    out["cache_vae_outputs"] = bool(value)
    out["cache_vae_outputs_to_disk"] = bool(value)


def _bucket(key: str | None) -> Callable[[Any, Overrides], None]:
    # kohya's bucket flags; the rest of the bucket config is filled in once all flags are read
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


# diffusers' scripts, invokeai-ti and kohya cast the frozen weights to the mixed-precision dtype; so does the
# flag here (unless weight_dtype is given). In YAML the two fields stay apart, as in invoke-training.


def _mixed_precision(value: Any, out: Overrides) -> None:
    out["mixed_precision"] = value
    out[_WEIGHTS_FOLLOW] = True


_WEIGHTS_FOLLOW = "\0weights follow --mixed_precision"  # a marker key, read and removed by apply_flag_overrides


def _sdxl(value: Any, out: Overrides) -> None:
    if value:
        out["type"] = "SDXL_TEXTUAL_INVERSION"


ALIASES: dict[str, Flag] = {
    # diffusers examples/textual_inversion/textual_inversion.py
    "pretrained_model_name_or_path": Flag("model"),
    "variant": Flag("hf_variant"),
    "train_data_dir": Flag(None, apply=_dataset_dir),
    "learnable_property": Flag("data_loader.caption_preset"),
    "output_dir": Flag("base_output_dir"),  # and the output layout of the tool whose flags are used
    "num_train_epochs": Flag("max_train_epochs"),
    "checkpointing_steps": Flag("save_every_n_steps"),
    "save_steps": Flag("save_embedding_every_n_steps"),
    "checkpoints_total_limit": Flag("max_checkpoints"),
    "validation_prompt": Flag("validation_prompts", kind="list"),
    "num_validation_images": Flag("num_validation_images_per_prompt"),
    "validation_steps": Flag("validate_every_n_steps"),
    "validation_epochs": Flag("validate_every_n_epochs"),
    "adam_beta1": Flag("optimizer.beta1"),
    "adam_beta2": Flag("optimizer.beta2"),
    "adam_weight_decay": Flag("optimizer.weight_decay"),
    "adam_epsilon": Flag("optimizer.epsilon"),
    "enable_xformers_memory_efficient_attention": Flag("xformers", kind="bool"),
    "no_safe_serialization": Flag(None, kind="bool", apply=_set("save_model_as", "bin")),
    "only_save_embeds": Flag(None, kind="bool", apply=lambda v, o: None,
                             note="--only_save_embeds: tiforge only ever saves the embedding"),
    "local_rank": Flag(None, apply=lambda v, o: None),  # set by torch.distributed launchers
    "resolution": Flag(None, apply=_resolution),
    "learning_rate": Flag("optimizer.learning_rate"),
    "sdxl": Flag(None, kind="bool", apply=_sdxl),
    "mixed_precision": Flag(None, apply=_mixed_precision),  # the diffusers/kohya SDXL scripts are separate programs
    # InvokeAI's invokeai-ti
    "model": Flag("model"),
    "root": Flag("install_embeddings_root"),
    "root_dir": Flag("install_embeddings_root"),
    # kohya-ss sd-scripts train_textual_inversion.py
    "token_string": Flag("placeholder_token"),
    "init_word": Flag("initializer_token"),
    "num_vectors_per_token": Flag("num_vectors"),
    "weights": Flag(None, apply=_weights),
    "use_object_template": Flag(None, kind="bool", apply=_set("data_loader.caption_preset", "object")),
    "use_style_template": Flag(None, kind="bool", apply=_set("data_loader.caption_preset", "style")),
    "cache_latents": Flag("cache_vae_outputs", kind="bool"),
    "xformers": Flag("xformers", kind="bool"),
    "sdpa": Flag(None, kind="bool", apply=_set("xformers", False),
                 note="--sdpa: PyTorch's scaled-dot-product attention is tiforge's default"),
    "mem_eff_attn": Flag(None, kind="bool", apply=_set("xformers", False),
                         note="--mem_eff_attn: using PyTorch's memory-efficient scaled-dot-product attention"),
    "optimizer_type": Flag(None, apply=_optimizer_type),
    "output_name": Flag("output_name"),
    "save_precision": Flag(None, apply=_precision),
    "max_data_loader_n_workers": Flag("dataloader_num_workers"),
    "log_with": Flag("report_to"),
    "prior_loss_weight": Flag(None, apply=_prior_loss_weight),
    "caption_extension": Flag("data_loader.dataset.caption_extension"),
    "dataset_config": Flag(None, apply=_dataset_config),
    "cache_latents_to_disk": Flag(None, kind="bool", apply=_cache_to_disk),
    "enable_bucket": Flag(None, kind="bool", apply=_bucket(None)),
    "min_bucket_reso": Flag(None, apply=_bucket("start_dim")),
    "max_bucket_reso": Flag(None, apply=_bucket("end_dim")),
    "bucket_reso_steps": Flag(None, apply=_bucket("divisible_by")),
    "bucket_no_upscale": Flag(None, kind="bool", apply=_bucket("no_upscale")),
    "flip_aug": Flag("data_loader.random_flip", kind="bool"),
    "random_crop": Flag(None, kind="bool", apply=lambda v, o: o.__setitem__("data_loader.center_crop", not v)),
    "shuffle_caption": Flag(None, kind="bool", apply=_shuffle_caption),
    "masked_loss": Flag("use_masks", kind="bool"),
    "debug_dataset": Flag(None, kind="bool", apply=_set("debug_dataset", True),
                          note="--debug_dataset: showing the data as it would be trained, then stopping"),
    "alpha_mask": Flag("use_masks", kind="bool"),  # with masks on, a picture's alpha channel is its mask
    # kohya-ss sd-scripts sdxl_train_textual_inversion.py
    "no_half_vae": Flag(None, kind="bool", apply=_set("vae_dtype", "float32")),
}

REFUSED = {
    "logging_dir": "logs always go to <run folder>/logs; choose the run folder's parent with --output_dir",
    "revision": "load a specific revision by downloading it and passing its folder as --pretrained_model_name_or_path",
    "tokenizer_name": "tiforge uses the model's own tokenizer",
    "repeats": "repeat the data with --max_train_epochs or --max_train_steps",
    "save_as_full_pipeline": "tiforge saves the embedding only; load it into any pipeline with load_textual_inversion",
    "gui": "the console front end is `tiforge ui`",
    "in_json": "fine-tuning metadata .json files are not read; use --train_data_dir with caption files, or a "
               "JSONL dataset (data_loader.dataset.type: IMAGE_CAPTION_JSONL_DATASET)",
    "reg_data_dir": "regularization images have no use in textual inversion (only the concept's pictures train it)",
    "v2": "the model's family is read from the model itself; remove --v2",
    "v_parameterization": "use --prediction_type v_prediction",
    "cache_text_encoder_outputs": "textual inversion trains through the text encoders, so their outputs change "
                                  "every step and cannot be cached",
}

_FIELDS = _field_flags()


def known_flag_names() -> list[str]:
    return sorted(set(_FIELDS) | set(ALIASES))


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--{name}={text}: expected true or false")


def flags_to_overrides(argv: list[str]) -> Overrides:
    """Turns `--name value`, `--name=value` and bare boolean flags into dotted config overrides."""
    out: Overrides = {}
    problems: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            problems.append(f"{token}: unexpected argument (flags look like --name=value)")
            continue
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        seen.add(name)
        if name in REFUSED:
            problems.append(f"--{name}: not supported: {REFUSED[name]}")
            if not has_value and i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        flag = ALIASES.get(name) or _FIELDS.get(name)
        if flag is None:
            close = difflib.get_close_matches(name, known_flag_names(), n=1)
            problems.append(f"--{name}: unknown flag" + (f" (did you mean --{close[0]}?)" if close else ""))
            continue
        if not has_value:
            if flag.kind == "bool" and (i >= len(argv) or argv[i].startswith("--")):
                value = "true"
            elif i < len(argv):
                value, i = argv[i], i + 1
            else:
                problems.append(f"--{name}: needs a value")
                continue
        try:
            # Values stay text: the config's types convert them ("3000" -> 3000, "5e-4" -> 0.0005) and
            # report what does not fit, with the same messages as for a YAML file.
            parsed: Any = _parse_bool(name, value) if flag.kind == "bool" else None if value in ("null", "None") \
                else value
            if flag.note:
                log.info(flag.note)
            if flag.apply is not None:
                flag.apply(parsed if flag.kind == "bool" else value, out)
            elif flag.kind == "list":
                out.setdefault(flag.path, []).append(value)
            else:
                out[flag.path] = parsed
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("command line: " + ("\n  - ".join(["", *problems]) if len(problems) > 1 else problems[0]))
    _output_layout_of_flags(seen, out)
    return out


def _output_layout_of_flags(seen: set[str], out: Overrides) -> None:
    """--output_dir with the diffusers example's, invokeai-ti's or kohya's flags: their file layout."""
    from tiforge.training.output_layout import default_invokeai_root, layout_of_flags

    layout = layout_of_flags(seen)
    if layout is None or "output_layout" in out:
        return
    out["output_layout"] = layout
    log.info("--output_dir: outputs go there as %s names them (output_layout: %s)",
             {"kohya": "kohya-ss sd-scripts", "invokeai": "invokeai-ti"}.get(layout, "the diffusers example"), layout)
    if "save_format" not in out and out.get("type") != "SDXL_TEXTUAL_INVERSION":
        out["save_format"] = "kohya" if layout == "kohya" else "diffusers"
    if layout == "invokeai":
        out.setdefault("save_model_as", "bin")  # invokeai-ti's learned_embeds.bin
    if layout == "invokeai" and "install_embeddings_root" not in out and default_invokeai_root():
        out["install_embeddings_root"] = str(default_invokeai_root())
    if layout == "invokeai":
        _resolve_invokeai_model_name(out)


def _resolve_invokeai_model_name(out: Overrides) -> None:
    """invokeai-ti's --model names a model installed in the InvokeAI root, not a path."""
    from pathlib import Path

    from tiforge.model.invokeai_models import resolve_model_name

    model, root = out.get("model"), out.get("install_embeddings_root")
    if not model or "/" in str(model) or "\\" in str(model) or Path(str(model)).expanduser().exists():
        return  # a path or a hub id
    if root is None:
        raise ConfigError(f"--model={model}: not a model folder or file, and no InvokeAI root to look the name up in "
                          "(--root, $INVOKEAI_ROOT or ~/invokeai); give the model's folder, file or hub id")
    out["model"] = resolve_model_name(str(model), root)


def apply_flag_overrides(data: dict, overrides: Overrides) -> dict:
    overrides = dict(overrides)
    if overrides.pop(_WEIGHTS_FOLLOW, False) and "weight_dtype" not in overrides and "weight_dtype" not in data:
        weights = WEIGHT_DTYPE_OF_MIXED_PRECISION.get(str(overrides["mixed_precision"]))
        if weights is not None:  # an unknown value is left to the config's own message
            overrides["weight_dtype"] = weights
            log.info("--mixed_precision=%s: frozen weights in %s, as the tool this flag comes from does "
                     "(set --weight_dtype to choose otherwise)", overrides["mixed_precision"], weights)
    for path, value in overrides.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    _fill_flag_only_defaults(data)
    return data


def _fill_flag_only_defaults(data: dict) -> None:
    """What a config built from flags alone needs that no flag says: the dataset's type, and the
    sizes of kohya-style buckets (around the training resolution)."""
    buckets = data.get("data_loader", {}).get("aspect_ratio_buckets")
    if isinstance(buckets, dict):
        res = data["data_loader"].get("resolution", 512)
        side = max(res) if isinstance(res, (list, tuple)) else int(res)
        for key, default in (("target_resolution", side), ("start_dim", 256), ("end_dim", 1024), ("divisible_by", 64)):
            buckets.setdefault(key, default)
    dataset = data.get("data_loader", {}).get("dataset")
    if isinstance(dataset, dict) and "type" not in dataset:
        dl = data["data_loader"]
        templated = dl.get("caption_preset") or dl.get("caption_templates")
        # images only, captioned by the templates; or images with same-name caption files
        dataset["type"] = "IMAGE_DIR_DATASET" if templated else "IMAGE_CAPTION_DIR_DATASET"
        if templated:
            dataset.pop("caption_extension", None)
