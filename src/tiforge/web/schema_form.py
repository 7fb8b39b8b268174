"""The training form, generated from the config schema: every field (nested objects flattened to
dotted paths), grouped like the console UI with the essentials first, each with its help text."""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tiforge.config.flag_help import FIELD_HELP
from tiforge.config.optimizer_schema import KOHYA_OPTIMIZERS
from tiforge.config.schema import SdTextualInversionConfig, SdxlTextualInversionConfig

# The console UI's main fields (frontends/console_ui.py MAIN_FIELDS, CHECKS and SELECTS), in its order.
ESSENTIALS = [
    "model", "placeholder_token", "initializer_token", "num_vectors", "data_loader.dataset.dataset_dir",
    "data_loader.caption_preset",
    "base_output_dir", "data_loader.resolution", "max_train_steps", "train_batch_size", "optimizer.learning_rate",
    "gradient_accumulation_steps", "lr_warmup_steps", "data_loader.center_crop", "scale_lr",
    "resume_from_checkpoint", "mixed_precision", "optimizer.optimizer_type", "xformers", "lr_scheduler",
]
SAVING = ("save_", "validat", "num_validation", "negative_validation", "sample_", "output_", "hub_", "push_to_hub",
          "install_", "report_to", "max_checkpoints", "enable_cpu_offload_during_validation")
# (title, folded, rule) in order; a field goes to the first group whose rule takes it.
GROUPS = [
    ("Essentials", False, lambda p: p in ESSENTIALS),
    ("Data", False, lambda p: p.startswith("data_loader.") or p == "use_masks"),
    ("Optimizer and schedule", True, lambda p: p.startswith(("optimizer.", "lr_")) or p == "max_grad_norm"),
    ("Saving and validation", True, lambda p: p.startswith(SAVING)),
    ("Advanced", True, lambda p: True),
]
_PATH_WORDS = ("_dir", "_file", "_path", "_root", "model", "single_file_config")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The string under each field of a class (the schema documents its fields that way)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError):
            continue
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _members(annotation: Any) -> list[Any]:
    """The members of a union (Optional included), annotations unwrapped."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _kind(path: str, annotation: Any) -> tuple[str, list | None]:
    members = [m for m in _members(annotation) if m is not type(None)]
    literals = [v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)]
    if path.endswith("optimizer_type"):
        return "string", [*KOHYA_OPTIMIZERS]  # suggestions: any torch.optim class or module.Class also works
    if literals and all(typing.get_origin(m) is Literal or m is bool for m in members):
        return "choice", ([True, False] if bool in members else []) + literals
    if len(members) != 1:
        return ("number", None) if set(members) == {int, float} else ("yaml", None)
    only = members[0]
    if typing.get_origin(only) is list and typing.get_args(only) in ((str,), ()):
        return "list", None
    simple = {bool: "boolean", int: "integer", float: "number"}
    if only in simple:
        return simple[only], None
    if only is str:
        return ("path" if path.rsplit(".", 1)[-1].endswith(_PATH_WORDS) else "string"), None
    return "yaml", None


def _default(info) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return None if info.default is PydanticUndefined else info.default


def _help_line(path: str) -> str:
    if path.endswith(".type"):  # the nested `type` fields name the kind of dataset or loader
        return "the kind of " + path.split(".")[-2].replace("_", " ")
    return FIELD_HELP.get(path.rsplit(".", 1)[-1], ("", ""))[1]


def _merge_choices(field: dict | None, annotation: Any) -> None:
    """A union's discriminator (`data_loader.dataset.type`) offers every member's value."""
    if field and field["kind"] == "choice":
        extra = [c for c in (_kind(field["path"], annotation)[1] or []) if c not in field["choices"]]
        field["choices"] += extra


def _fields_of(models: list[type[BaseModel]], prefix: str, required_above: bool) -> list[dict]:
    """Fields of a model, or of the union of several (the first member that has a name wins)."""
    out: dict[str, dict] = {}
    for model in models:
        docs = _attribute_docs(model)
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            if path in out or any(f["path"].startswith(path + ".") for f in out.values()):
                _merge_choices(out.get(path), info.annotation)
                continue
            nested = _models(info.annotation)
            if nested and name != "optimizer_args":
                for f in _fields_of(nested, path + ".", required_above and info.is_required()):
                    out.setdefault(f["path"], f)
                continue
            kind, choices = _kind(path, info.annotation)
            out[path] = {
                "path": path, "label": name.replace("_", " ").capitalize(), "kind": kind, "choices": choices,
                "default": _default(info), "help": docs.get(name) or _help_line(path),
                "required": required_above and info.is_required() and model is models[0],
            }
    return list(out.values())


@lru_cache(maxsize=1)
def form_schema() -> dict:
    """{"groups": [{"title", "folded", "fields": [...]}]}: SD's fields, then the SDXL-only ones."""
    fields = _fields_of([SdTextualInversionConfig, SdxlTextualInversionConfig], "", True)
    types_field = next(f for f in fields if f["path"] == "type")
    types_field["choices"] = ["SD_TEXTUAL_INVERSION", "SDXL_TEXTUAL_INVERSION"]
    types_field["help"] += " (set from the model when left empty)"
    groups = []
    placed: set[str] = set()
    for title, folded, rule in GROUPS:
        members = [f for f in fields if f["path"] not in placed and rule(f["path"])]
        if title == "Essentials":
            members.sort(key=lambda f: ESSENTIALS.index(f["path"]))
        placed |= {f["path"] for f in members}
        groups.append({"title": title, "folded": folded, "fields": members})
    return {"groups": groups}


def all_paths() -> list[str]:
    return [f["path"] for g in form_schema()["groups"] for f in g["fields"]]
