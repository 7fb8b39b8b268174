"""Command-line flags for every config field, plus the flag names users bring from the diffusers
example script, InvokeAI's `invokeai-ti` and kohya-ss sd-scripts (their tables: `config.peer_flags`).

Each flag becomes a config override, so a flag-only command line, a YAML file and a mix of both
go through the same validation. Flags that mean nothing to tiforge are refused with what to use
instead; none is silently ignored.
"""

from __future__ import annotations

import logging
from typing import Any, get_args, get_origin

from tiforge.config.schema import (AdamWOptimizerConfig, ConfigError, SdxlTextualInversionConfig,
                                   WEIGHT_DTYPE_OF_MIXED_PRECISION)
from tiforge.config.optimizer_schema import NamedOptimizerConfig, ProdigyOptimizerConfig
from tiforge.config.data_schema import ImageCaptionDirDatasetConfig, TextualInversionSDDataLoaderConfig
from tiforge.config.dotted import set_dotted
from tiforge.config.flag_spec import Flag, Overrides
from tiforge.config.flag_suggestions import unknown_flag_message
from tiforge.config.peer_flags import all_flags, all_refused
from tiforge.config.placeholder_flag import (PENDING, PENDING_MORE, add_additional_embedding_flag, add_placeholder_flag,
                                            place_placeholders)

log = logging.getLogger("tiforge")


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
        ("optimizer.", ProdigyOptimizerConfig, set()),
        ("optimizer.", NamedOptimizerConfig, set()),
        ("data_loader.dataset.", ImageCaptionDirDatasetConfig, {"type"}),
    ]
    for prefix, model, skip in models:
        for name, info in model.model_fields.items():
            if name in skip:
                continue
            kind = "bool" if _is_bool(info.annotation) else "list" if _is_list(info.annotation) else "value"
            flags.setdefault(name, Flag(prefix + name, kind))
    return flags


def _resolution(value: Any, out: Overrides) -> None:
    text = str(value)
    out["data_loader.resolution"] = [int(v) for v in text.split(",")][::-1] if "," in text else int(text)


def _precision(value: Any, out: Overrides) -> None:
    out["save_precision"] = {"fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(value, value)


# diffusers' scripts, invokeai-ti and kohya cast the frozen weights to the mixed-precision dtype; so does the
# flag here (unless weight_dtype is given). In YAML the two fields stay apart, as in invoke-training.


def _mixed_precision(value: Any, out: Overrides) -> None:
    out["mixed_precision"] = value
    out[_WEIGHTS_FOLLOW] = True


_WEIGHTS_FOLLOW = "\0weights follow --mixed_precision"  # a marker key, read and removed by apply_flag_overrides
_TOOL = "\0the tool whose command line this is"  # a marker key: its defaults apply (config.tool_defaults)

# Config fields whose flag reads its value the way the other tools write it (kohya's W,H resolution,
# fp16/bf16 precisions); their help lines are the fields'.
_FIELD_SPELLINGS: dict[str, Flag] = {
    "resolution": Flag(None, apply=_resolution),
    "mixed_precision": Flag(None, apply=_mixed_precision),
    "save_precision": Flag(None, apply=_precision),
    # several embeddings: one per --placeholder TOKEN:INIT[:N] (config.placeholder_flag)
    "placeholder": Flag(None, apply=add_placeholder_flag),
    "additional_embeddings": Flag(None, apply=add_additional_embedding_flag),
}

ALIASES: dict[str, Flag] = {**all_flags(), **_FIELD_SPELLINGS}
REFUSED = all_refused()
_FIELDS = _field_flags()


def known_flag_names() -> list[str]:
    return sorted(set(_FIELDS) | set(ALIASES))


# boolean fields that also take "auto"
_AUTO_SWITCHES = {"torch_compile"}


def _parse_bool(name: str, text: str) -> bool | str:
    lowered = text.lower()
    if lowered == "auto" and name in _AUTO_SWITCHES:
        return lowered
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--{name}={text}: expected true or false{' or auto' if name in _AUTO_SWITCHES else ''}")


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
            problems.append(unknown_flag_message(name, known_flag_names()))
            if not has_value and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # its value: not a second, bogus "unexpected argument"
            continue
        if flag.kind == "multi":  # kohya's nargs="*": every value up to the next flag
            value = [value] if has_value else []
            while i < len(argv) and not argv[i].startswith("--"):
                value, i = [*value, argv[i]], i + 1
        elif not has_value:
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
    out[_TOOL] = layout
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


def apply_flag_overrides(data: dict, overrides: Overrides, tool_defaults: bool = True) -> dict:
    """The flags over `data`; then, for a command line in another tool's flags alone (`tool_defaults`:
    no config file), that tool's defaults wherever neither says otherwise."""
    overrides = dict(overrides)
    tool = overrides.pop(_TOOL, None)
    if overrides.pop(_WEIGHTS_FOLLOW, False) and "weight_dtype" not in overrides and "weight_dtype" not in data:
        weights = WEIGHT_DTYPE_OF_MIXED_PRECISION.get(str(overrides["mixed_precision"]))
        if weights is not None:  # an unknown value is left to the config's own message
            overrides["weight_dtype"] = weights
            log.info("--mixed_precision=%s: frozen weights in %s, as the tool this flag comes from does "
                     "(set --weight_dtype to choose otherwise)", overrides["mixed_precision"], weights)
    placeholders, more = overrides.pop(PENDING, []), overrides.pop(PENDING_MORE, [])
    for path, value in overrides.items():
        set_dotted(data, path, value)
    place_placeholders(data, placeholders, more)
    if tool is not None and tool_defaults:
        from tiforge.config.tool_defaults import apply_tool_defaults

        apply_tool_defaults(data, tool)
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
