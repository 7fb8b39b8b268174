"""InvokeAI model names (`invokeai-ti --model=stable-diffusion-1.5`) resolved to the files an InvokeAI
install holds, read-only:

- InvokeAI 4 / 5: the `models` table of `<root>/databases/invokeai.db`, one JSON `config` per model with
  its `name`, `type` and `path` (relative to `<root>/models` unless absolute);
- InvokeAI 3: `<root>/configs/models.yaml`, keys `<base>/main/<name>` holding a `path`;
- any version: folders or files `<root>/models/<base>/main/<name>[.safetensors|.ckpt]`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tiforge.config.schema import ConfigError


def _from_database(root: Path) -> dict[str, str]:
    db = root / "databases" / "invokeai.db"
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT config FROM models").fetchall()
    except sqlite3.Error:
        return {}
    found = {}
    for (text,) in rows:
        cfg = json.loads(text)
        if cfg.get("type") == "main" and cfg.get("name") and cfg.get("path"):
            found[cfg["name"]] = cfg["path"]
    return found


def _from_models_yaml(root: Path) -> dict[str, str]:
    import yaml

    path = root / "configs" / "models.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {key.rsplit("/", 1)[-1]: entry["path"] for key, entry in data.items()
            if isinstance(entry, dict) and "/main/" in key and entry.get("path")}


def _from_folders(root: Path) -> dict[str, str]:
    found = {}
    for item in sorted((root / "models").glob("*/main/*")):
        name = item.stem if item.suffix in (".safetensors", ".ckpt") else item.name
        found.setdefault(name, str(item))
    return found


def installed_models(root: str | Path) -> dict[str, Path]:
    """name -> path of every main model the InvokeAI install at `root` knows."""
    root = Path(root).expanduser()
    found: dict[str, Path] = {}
    for source in (_from_folders, _from_models_yaml, _from_database):  # later sources win
        for name, path in source(root).items():
            p = Path(path).expanduser()
            found[name] = p if p.is_absolute() else root / "models" / p
    return found


def resolve_model_name(name: str, root: str | Path) -> str:
    """The path of InvokeAI model `name`, or a ConfigError naming what the install holds."""
    models = installed_models(root)
    if name in models and models[name].exists():
        return str(models[name])
    known = ", ".join(sorted(models)) or "none"
    raise ConfigError(
        f"--model={name}: not a model folder or file, and the InvokeAI install at {root} has no model of that "
        f"name (installed main models: {known}); give the model's folder, .safetensors file or hub id"
    )
