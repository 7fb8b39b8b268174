"""`accelerate launch` with two gloo processes on the CPU trains one embedding data-parallel."""

import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from conftest import base_config


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_sd1, image_dir, tmp_path):
    two = base_config(tiny_sd1, image_dir, tmp_path / "two", max_train_steps=4, train_batch_size=2)
    one = base_config(tiny_sd1, image_dir, tmp_path / "one", max_train_steps=4, train_batch_size=4)
    paths = []
    for name, cfg in (("two", two), ("one", one)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "tiforge.cli", "train", str(paths[0]), "-q"]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    single = subprocess.run([sys.executable, "-m", "tiforge.cli", "train", str(paths[1]), "-q"],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]

    runs = list((tmp_path / "two").iterdir())
    assert len(runs) == 1, "both processes must write into one run folder"
    log = (runs[0] / "train.log").read_text()
    assert "x 2 process(es)" in log and "vectors identical across 2 processes" in log
    assert log.count("embedding saved") == 1, "only the main process writes files"
    a = load_file(runs[0] / "thing.safetensors")["emb_params"]
    b = load_file(next((tmp_path / "one").iterdir()) / "thing.safetensors")["emb_params"]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
