"""The form's values as a config: dotted paths to a nested dict, the family from the model, and the
config's own validation messages split per field for the form."""

from __future__ import annotations

import re
import yaml

from tiforge.config.dotted import set_dotted
from tiforge.config.loading import config_from_dict, dump_config
from tiforge.config.schema import SDXL_TYPES, ConfigError
from tiforge.web.preflight import problems as preflight_problems

# A problem line of config.loading's message: "  - data_loader.resolution: ..." or "a / b: ...".
_PROBLEM = re.compile(r"^\s*- (?:(?P<field>[A-Za-z_][\w.]*)(?: / [\w.]+)*: )?(?P<message>.*)$")
_HEADER = re.compile(r"^(?P<source>[^:]*): (?P<message>.*)$")


def nested(values: dict) -> dict:
    """{"optimizer.learning_rate": 1e-3, "data_loader": {...}} -> one nested dict. An empty text field
    is unset (its default applies); null stays null, as in YAML."""
    out: dict = {}
    for key, value in _flatten(values, ""):
        if value != "":
            set_dotted(out, key, value)
    return out


def _flatten(values: dict, prefix: str):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# A form that fills only one kind of dataset's fields means that kind (the union needs its `type`).
_DATASET_KIND = {"jsonl_path": "IMAGE_CAPTION_JSONL_DATASET", "dataset_name": "HF_HUB_IMAGE_CAPTION_DATASET",
                 "config_path": "KOHYA_DATASET_CONFIG", "caption_extension": "IMAGE_CAPTION_DIR_DATASET"}


def with_dataset_type(data: dict) -> dict:
    dataset = data.get("data_loader", {}).get("dataset") if isinstance(data.get("data_loader"), dict) else None
    if isinstance(dataset, dict) and "type" not in dataset:
        kind = next((k for key, k in _DATASET_KIND.items() if key in dataset), "IMAGE_DIR_DATASET")
        data["data_loader"]["dataset"] = {"type": kind, **dataset}
    return data


def with_family(data: dict) -> dict:
    """Without a `type`, the family follows the chosen model (as in the console UI; no network)."""
    model = data.get("model")
    if data.get("type") or not isinstance(model, str) or not model.strip():
        return data
    from tiforge.model.loading import is_sdxl_model

    if is_sdxl_model(model.strip(), data.get("single_file_config"), online=False):
        return {**data, "type": "SDXL_TEXTUAL_INVERSION"}
    return data


def split_problems(message: str) -> list[dict]:
    """config.loading's message as [{"field", "message"}], one per problem, in the config's own words."""
    problems = []
    for line in message.splitlines():
        match = _PROBLEM.match(line)
        if match:
            problems.append({"field": match["field"], "message": line.strip()[2:]})
    if not problems:  # a one-line error: "config: type: 'X' is not a textual-inversion pipeline ..."
        head = _HEADER.match(message)
        text = head["message"] if head else message
        field = text.split(":", 1)[0] if re.match(r"^[A-Za-z_][\w.]*:", text) else None
        problems.append({"field": field, "message": text})
    return problems


def validate(values: dict, source: str = "form", preflight: bool = True) -> dict:
    """{"ok", "errors", "family", "yaml", "config"}: the answer of /api/config/validate. With
    `preflight`, also what the training's start would refuse (web.preflight): a valid answer means
    the run will not fail on its config. Saving YAML skips that (it may be meant for another machine)."""
    data = with_family(with_dataset_type(nested(values)))
    try:
        config = config_from_dict(data, source)
    except ConfigError as err:
        family = "sdxl" if data.get("type") in SDXL_TYPES else "sd" if data.get("model") else None
        return {"ok": False, "errors": split_problems(str(err)), "family": family, "yaml": None, "config": data}
    family = "sdxl" if config.is_sdxl else "sd"
    errors = preflight_problems(config) if preflight else []
    return {"ok": not errors, "errors": errors, "family": family, "yaml": None if errors else dump_config(config),
            "config": data}


def from_yaml(text: str) -> dict:
    """{"config": nested dict, "errors": [...]} of a YAML text (invoke-training's YAML as it is)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return {"config": {}, "errors": [{"field": None, "message": f"not valid YAML: {err}"}]}
    if not isinstance(data, dict):
        return {"config": {}, "errors": [{"field": None, "message": "expected a mapping of config fields"}]}
    return {"config": data, "errors": validate(data, "yaml")["errors"]}
