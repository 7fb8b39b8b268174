"""The console front end, driven headless with Textual's pilot."""

import asyncio
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from textual.widgets import Button, Checkbox, Input, Select

from tiforge.frontends.console_ui import OPTIMIZERS, TrainerUI, find_models, form_to_config


def test_models_are_found_in_model_folders(tiny_sd1):
    assert str(tiny_sd1) in find_models([tiny_sd1.parent])


def test_form_maps_to_the_config_schema():
    cfg = form_to_config({"model": "m", "trigger": "<t>", "initializer": "*", "num_vectors": "2", "data_dir": "d",
                          "output_dir": "o", "resolution": "512", "max_steps": "100", "batch_size": "1",
                          "learning_rate": "0.005", "accumulation": "1", "warmup": "0", "lr_scheduler": "constant",
                          "center_crop": True, "resume": True, "learnable_property": "style"})
    assert cfg["optimizer"]["learning_rate"] == 0.005 and cfg["data_loader"]["caption_preset"] == "style"
    assert cfg["resume_from_checkpoint"] == "latest"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_the_form_offers_makes_a_valid_config(optimizer):
    from tiforge.config.loading import config_from_dict

    cfg = form_to_config({"model": "m", "trigger": "<t>", "initializer": "*", "num_vectors": "1", "data_dir": "d",
                          "output_dir": "o", "resolution": "512", "max_steps": "10", "batch_size": "1",
                          "learning_rate": "1.0", "accumulation": "1", "warmup": "0", "lr_scheduler": "constant",
                          "optimizer": optimizer})
    assert config_from_dict(cfg, "form").optimizer.optimizer_type == optimizer


def test_fill_the_form_train_and_reproduce_with_the_saved_yaml(tiny_sd1, image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TIFORGE_HOME", str(tmp_path / "home"))
    prefs = tmp_path / "prefs.yaml"

    async def drive():
        app = TrainerUI(prefs_path=prefs, models=[str(tiny_sd1)])
        async with app.run_test(size=(140, 60)) as pilot:
            app.query_one("#model_pick", Select).value = str(tiny_sd1)
            await pilot.pause()
            assert app.query_one("#model", Input).value == str(tiny_sd1)
            app.query_one("#trigger", Input).focus()
            await pilot.press(*"<ring>")
            await pilot.pause()
            # the trigger pre-fills both folders
            assert app.query_one("#output_dir", Input).value.endswith("output/ring")
            values = {"initializer": "toy", "data_dir": str(image_dir), "resolution": "32", "max_steps": "abc",
                      "batch_size": "2", "learning_rate": "0.01", "seed": "5"}
            for key, value in values.items():
                app.query_one(f"#{key}", Input).value = value
            await pilot.pause()
            # validated as typed, with the config's own message
            errors = str(app.query_one("#errors").render())
            assert "max_train_steps" in errors and app.query_one("#start", Button).disabled
            app.query_one("#max_steps", Input).value = "3"
            app.query_one("#scale_lr", Checkbox).value = False
            await pilot.pause()
            assert not app.query_one("#start", Button).disabled, str(app.query_one("#errors").render())
            await pilot.click("#save")
            await pilot.click("#start")
            for _ in range(600):
                await pilot.pause(0.1)
                if app.status != "training":
                    break
            assert app.status == "finished", app.last_error
            assert "step 3/3" in str(app.query_one("#progress").render()) or "done:" in str(
                app.query_one("#progress").render())
            return app.result, app.saved_config

    result, saved = asyncio.run(drive())
    assert yaml.safe_load(prefs.read_text())["trigger"] == "<ring>", "the form remembers its values"
    ui_vectors = load_file(result.embedding_path)["<ring>"]
    rerun = subprocess.run([sys.executable, "-m", "tiforge.cli", "train", str(saved), "-q"], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    runs = sorted(p for p in result.run_dir.parent.iterdir() if p.is_dir())
    assert len(runs) == 2
    assert torch.equal(load_file(runs[-1] / "ring.safetensors")["<ring>"], ui_vectors)


def test_stop_button_saves_and_stops(tiny_sd1, image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TIFORGE_HOME", str(tmp_path / "home"))

    async def drive():
        app = TrainerUI(prefs_path=tmp_path / "p.yaml", models=[])
        async with app.run_test(size=(140, 60)) as pilot:
            for key, value in {"model": str(tiny_sd1), "trigger": "<s>", "initializer": "toy",
                               "data_dir": str(image_dir), "output_dir": str(tmp_path / "out"), "resolution": "32",
                               "max_steps": "100000", "batch_size": "1"}.items():
                app.query_one(f"#{key}", Input).value = value
            await pilot.pause()
            await pilot.click("#start")
            for _ in range(600):
                await pilot.pause(0.1)
                if app.losses:
                    break
            await pilot.click("#stop")
            for _ in range(600):
                await pilot.pause(0.1)
                if app.status != "training":
                    break
            return app.status, str(app.query_one("#progress").render())

    status, text = asyncio.run(drive())
    assert status == "stopped" and "resume_from_checkpoint=" in text
    assert list((tmp_path / "out").glob("*/checkpoints/checkpoint-step_*/training_state.pt"))
