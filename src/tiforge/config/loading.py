"""Reading a config: YAML files, `--set` overrides, validation with every problem reported at once,
and writing the resolved config back as YAML."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.config.schema import ConfigError, SdTextualInversionConfig, SdxlTextualInversionConfig, TrainingConfig, config_class
from tiforge.config.dotted import set_dotted

_MOVED_KEYS = {
    "learning_rate": "optimizer.learning_rate",
    "resolution": "data_loader.resolution",
    "center_crop": "data_loader.center_crop",
    "random_flip": "data_loader.random_flip",
    "caption_preset": "data_loader.caption_preset",
    "learnable_property": "data_loader.caption_preset",
    "dataset_dir": "data_loader.dataset.dataset_dir",
    "train_data_dir": "data_loader.dataset.dataset_dir",
    "optimizer_type": "optimizer.optimizer_type",
    "pretrained_model_name_or_path": "model",
    "output_dir": "base_output_dir",
}



_SDXL_ONLY = set(SdxlTextualInversionConfig.model_fields) - set(SdTextualInversionConfig.model_fields)


def _hint(path: tuple[Any, ...]) -> str:
    name = str(path[-1]) if path else ""
    if name in _SDXL_ONLY:
        return " (it applies to SDXL only: set type: SDXL_TEXTUAL_INVERSION, or --sdxl on the command line)"
    if name in _MOVED_KEYS:
        return f" (did you mean {_MOVED_KEYS[name]}?)"
    known = set(SdxlTextualInversionConfig.model_fields) | set(TextualInversionSDDataLoaderConfig.model_fields)
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines: list[str] = []
    for e in err.errors():
        # Union members add their class name to the path; users only know the YAML keys.
        path = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p[:1].isupper() or p.startswith("function-"))))
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown field{_hint(path)}")
        elif e["type"] == "value_error" and not path:
            for msg in str(e["ctx"]["error"]).splitlines():
                lines.append(f"  - {msg}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            quiet = e["type"] in ("missing", "value_error") or isinstance(got, dict)
            lines.append(f"  - {where}: {msg}{'' if quiet else f' (got {got!r})'}")
    return "\n".join([f"{source}: the config has {len(lines)} problem(s):", *lines])


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optimizer.learning_rate=5e-4")
    key, _, raw = item.partition("=")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        # YAML 1.1 reads "5e-4" (no dot) as a string; users mean a number.
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        set_dotted(data, keys, value)
    return data


def config_from_dict(data: dict, source: str = "config") -> TrainingConfig:
    try:
        cls = config_class(data.get("type"))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    return config_from_dict(apply_overrides(read_config_file(path), overrides or []), str(path))


def dump_config(config: TrainingConfig) -> str:
    data = config.model_dump(mode="json")
    # further embeddings right after the first one's fields, and only where there are any
    more = data.pop("additional_embeddings", [])
    if more:
        keys = list(data)
        at = keys.index("initial_phrase") + 1 if "initial_phrase" in keys else len(keys)
        data = {**{k: data[k] for k in keys[:at]}, "additional_embeddings": more, **{k: data[k] for k in keys[at:]}}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
