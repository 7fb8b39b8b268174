"""Dotted config paths (`data_loader.dataset.dataset_dir`) in a plain config dict: how `--set`, flags
and the other tools' defaults reach nested fields."""

from __future__ import annotations

from typing import Any

MISSING = object()


def lookup(data: dict, path: str) -> Any:
    """The value at `path`, or MISSING."""
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def set_dotted(data: dict, path: str | list[str], value: Any) -> None:
    """Set `path`, making (or replacing non-dict values with) the dicts on the way."""
    keys = path.split(".") if isinstance(path, str) else path
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
