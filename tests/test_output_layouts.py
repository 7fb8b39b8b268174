"""Output layouts: which command line picks which, the names each layout gives, InvokeAI model names."""

import json
import sqlite3
from pathlib import Path

import pytest

from tiforge.config.flags import flags_to_overrides
from tiforge.config.schema import ConfigError
from tiforge.model.invokeai_models import installed_models
from tiforge.training.output_layout import OutputPlan, layout_of_flags


@pytest.mark.parametrize("argv, layout", [
    (["--pretrained_model_name_or_path=m", "--output_dir=o"], "diffusers"),
    (["--model=/m", "--output_dir=o"], "invokeai"),
    (["--pretrained_model_name_or_path=m", "--output_dir=o", "--output_name=x", "--token_string=t"], "kohya"),
    (["--pretrained_model_name_or_path=m"], None),  # no --output_dir: the config's own layout
])
def test_the_command_line_picks_the_layout(argv, layout):
    out = flags_to_overrides(argv)
    assert out.get("output_layout") == layout
    assert layout_of_flags({a[2:].split("=")[0] for a in argv}) == layout
    if layout == "kohya":
        assert out["save_format"] == "kohya"
    if layout in ("diffusers", "invokeai"):
        assert out["save_format"] == "diffusers"


def test_names_each_layout_gives(tmp_path):
    kohya = OutputPlan("kohya", tmp_path, "mychar", "safetensors")
    assert kohya.final.name == "mychar.safetensors"
    assert kohya.snapshot("step", 200).name == "mychar-step00000200.safetensors"
    assert kohya.snapshot("epoch", 2).name == "mychar-000002.safetensors"
    assert kohya.checkpoint_dir("step", 200).name == "mychar-step00000200-state"
    diffusers = OutputPlan("diffusers", tmp_path, "x", "bin")
    assert diffusers.final.name == "learned_embeds.bin"
    assert diffusers.snapshot("step", 500).name == "learned_embeds-steps-500.bin"
    assert diffusers.checkpoint_dir("step", 1500) == tmp_path / "checkpoint-1500"
    runs = OutputPlan("run_folders", tmp_path, "thing", "safetensors")
    assert runs.checkpoint_dir("step", 3) == tmp_path / "checkpoints" / "checkpoint-step_00000003"
    assert runs.snapshot("step", 3) == tmp_path / "embeddings" / "thing-step00000003.safetensors"


def _invokeai5_root(tmp_path: Path) -> Path:
    root = tmp_path / "invokeai"
    (root / "databases").mkdir(parents=True)
    (root / "models" / "abc-uuid").mkdir(parents=True)
    with sqlite3.connect(root / "databases" / "invokeai.db") as db:
        db.execute("CREATE TABLE models (id TEXT PRIMARY KEY, config TEXT NOT NULL)")
        for key, name, kind in (("abc-uuid", "stable-diffusion-1.5", "main"), ("vae-uuid", "sd-vae", "vae")):
            db.execute("INSERT INTO models VALUES (?, ?)",
                       (key, json.dumps({"name": name, "type": kind, "path": key, "base": "sd-1"})))
    return root


def test_invokeai_model_names_resolve_from_the_install(tmp_path):
    root = _invokeai5_root(tmp_path)
    out = flags_to_overrides(["--model=stable-diffusion-1.5", f"--root={root}", "--output_dir=o"])
    assert out["model"] == str(root / "models" / "abc-uuid")
    (root / "models" / "sd-2" / "main" / "sd21").mkdir(parents=True)  # an InvokeAI 3 folder install
    assert installed_models(root)["sd21"] == root / "models" / "sd-2" / "main" / "sd21"
    with pytest.raises(ConfigError, match="no model of that name .*sd21, stable-diffusion-1.5"):
        flags_to_overrides(["--model=sdxl-base", f"--root={root}", "--output_dir=o"])


def test_invokeai_model_name_without_a_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INVOKEAI_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no InvokeAI root to look the name up in"):
        flags_to_overrides(["--model=stable-diffusion-1.5", "--output_dir=o"])
