"""Checkpoints that survive anything: exact resume in a new process, Ctrl-C, kill -9, NaN, disk."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tiforge.training.recipe as train_module
from tiforge.training.checkpoints import CheckpointError, find_checkpoint
from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import load_embedding
from tiforge.training.interrupts import TrainingStopped
from tiforge.training.run_folders import OutputError, check_output_space
from tiforge.training.recipe import train

from conftest import base_config

CLI = [sys.executable, "-m", "tiforge.cli"]


def tiforge(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, **kw)


def write_config(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("variant", ["uncached", "cached", "accumulation"])
def test_resumed_run_ends_bit_identical(variant, tiny_sd1, image_dir, tmp_path):
    extra = {
        "uncached": {"data_loader__random_flip": True, "data_loader__center_crop": False},
        "cached": {"cache_vae_outputs": True, "data_loader__random_flip": True},  # both flip variants cached
        "accumulation": {"gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2},
    }[variant]
    # batch 1 over 4 images: step 3 of 6 falls in the middle of an epoch
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=6, save_every_n_steps=3,
                      train_batch_size=1, **extra)
    full = train(config_from_dict(cfg), progress=False)
    expected = load_file(full.embedding_path)["emb_params"].clone()
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000003"
    assert half.is_dir()

    done = tiforge("train", str(write_config(tmp_path, cfg)), "-q", "--set", f"resume_from_checkpoint={half}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(load_file(full.embedding_path)["emb_params"], expected)
    assert "resuming from" in (full.run_dir / "train.log").read_text()


def test_ctrl_c_saves_and_says_how_to_resume(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=100000, train_batch_size=1)
    path = write_config(tmp_path, cfg)
    proc = subprocess.Popen([*CLI, "train", str(path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = None
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((tmp_path / "out").glob("*/train.log"))
        if logs and "update(s) per epoch" in logs[0].read_text():
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None, "training never started"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Training interrupted." in err and "--set resume_from_checkpoint=" in err
    ckpt = Path(err.split("resume_from_checkpoint=")[1].split()[0])
    assert f"tiforge train {ckpt / 'config.yaml'} " in err, "the resume command names the run's resolved config"
    step = int(ckpt.name.split("_")[-1])
    assert step >= 1 and load_embedding(ckpt / "thing.safetensors").single.shape == (2, 32)
    assert load_embedding(log.parent / "thing.safetensors").step == step

    resumed = tiforge("train", str(path), "-q", "--set", f"resume_from_checkpoint={ckpt}",
                      "--set", f"max_train_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_embedding(log.parent / "thing.safetensors").step == step + 2


def test_kill_9_at_random_moments_never_leaves_a_broken_checkpoint(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=100000, train_batch_size=1,
                      save_every_n_steps=1, max_checkpoints=2)
    path = write_config(tmp_path, cfg)
    rng = random.Random(0)
    resume: list[str] = []
    for attempt in range(4):
        proc = subprocess.Popen([*CLI, "train", str(path), "-q", *resume], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "out").glob("*/checkpoints/checkpoint-*")):
            time.sleep(0.1)
        time.sleep(rng.uniform(0.2, 2.5))  # saves happen every step: kills land in and between them
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = [p for p in (tmp_path / "out").glob("*/checkpoints/checkpoint-*") if not p.name.startswith(".")]
        assert finished, f"attempt {attempt}: no checkpoint survived"
        for ckpt in finished:  # every checkpoint under its final name is whole
            assert load_embedding(ckpt / "thing.safetensors").single.shape == (2, 32)
            assert (ckpt / "training_state.pt").is_file() and (ckpt / "position.json").is_file()
            torch.load(ckpt / "training_state.pt", weights_only=True)
        resume = ["--set", "resume_from_checkpoint=latest"]
    latest = find_checkpoint("latest", tmp_path / "out")
    step = int(latest.name.split("_")[-1])
    final = tiforge("train", str(path), "-q", *resume, "--set", f"max_train_steps={step + 1}")
    assert final.returncode == 0, final.stderr[-2000:]
    assert not list((tmp_path / "out").rglob(".*.tmp")), "stale temporaries are cleared on resume"


def test_nan_gradients_are_skipped_then_stop_with_the_last_good_embedding(tiny_sd1, image_dir, tmp_path, monkeypatch):
    real = train_module.denoising_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(train_module, "denoising_loss", flaky)
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=50, train_batch_size=4,
                      max_nonfinite_steps=3)
    with pytest.raises(TrainingStopped, match=r"3 steps in a row had NaN/inf gradients") as err:
        train(config_from_dict(cfg), progress=False)
    assert err.value.exit_code == 3
    run_dir = next((tmp_path / "out").iterdir())
    emb = load_embedding(run_dir / "thing.safetensors")
    assert emb.step == 2 and torch.isfinite(emb.single).all()
    assert "non-finite gradient at step 3: step skipped (1 in a row)" in (run_dir / "train.log").read_text()


def test_an_update_that_overflows_is_undone(tiny_sd1, image_dir, tmp_path, monkeypatch):
    class Overflowing(torch.optim.AdamW):
        def step(self, closure=None):
            out = super().step(closure)
            p = self.param_groups[0]["params"][0]
            if int(self.state[p]["step"]) == 2:  # the second update overflows
                p.data[0, 0] = float("inf")
            return out

    def build(config, params, lr):
        return Overflowing(params, lr=lr)

    monkeypatch.setattr(train_module, "build_optimizer", build)
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3, save_every_n_steps=1)
    result = train(config_from_dict(cfg), progress=False)
    assert torch.isfinite(load_embedding(result.embedding_path).single).all()
    assert "non-finite gradient at step 2: step skipped" in (result.run_dir / "train.log").read_text()


def test_resume_refuses_a_different_setup_and_missing_checkpoints(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, save_every_n_steps=1)
    train(config_from_dict(cfg), progress=False)
    changed = {**cfg, "placeholder_token": "<other>", "resume_from_checkpoint": "latest"}
    with pytest.raises(CheckpointError, match=r"placeholder_token: checkpoint has '<thing>', config has '<other>'"):
        train(config_from_dict(changed), progress=False)
    with pytest.raises(CheckpointError, match="no complete checkpoint in any run folder"):
        find_checkpoint("latest", tmp_path / "empty")
    with pytest.raises(CheckpointError, match="checkpoint-step_00000999: no such checkpoint"):
        find_checkpoint("checkpoint-step_00000999", tmp_path / "out")
    assert find_checkpoint("checkpoint-step_00000001", tmp_path / "out").name == "checkpoint-step_00000001"


def test_unwritable_or_full_output_is_caught_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write there"):
        check_output_space(blocker / "runs", 1)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 90, 10 * 2**20))
    with pytest.raises(OutputError, match="10 MiB free, but this run needs about 64 MiB"):
        check_output_space(tmp_path, 64 * 2**20)


def test_a_checkpoint_from_before_a_new_field_resumes(tiny_sd1, image_dir, tmp_path):
    """A checkpoint's config lacks the fields added since it was written; unset, they mean its behaviour."""
    from tiforge.training.resume import check_resumable
    config = config_from_dict(base_config(tiny_sd1, image_dir, tmp_path))
    saved = config.model_dump(mode="json")
    for newer in ("preserve_embedding_norm", "directional_update", "timestep_sampling"):
        saved.pop(newer)
    check_resumable({"config": saved}, config, tmp_path)  # no CheckpointError
    changed = config.model_copy(update={"directional_update": True})
    with pytest.raises(CheckpointError, match="directional_update"):
        check_resumable({"config": saved}, changed, tmp_path)
