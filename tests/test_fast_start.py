"""`tiforge inspect` and `tiforge convert` on safetensors files and A1111 pictures run without
importing torch (3-4 s of start-up); only the pickled containers (.pt/.bin) load it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import tiforge
from tiforge.embeddings.files import load_embedding, save_embedding

# Runs the CLI's entry point in a fresh interpreter and reports which heavy modules it imported.
_PROBE = """
import contextlib, io, json, sys
from tiforge.frontends.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
print(json.dumps({"codes": codes, "loaded": [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]}))
"""


def _run_cli(commands: list[list[str]]) -> dict:
    src = str(Path(tiforge.__file__).parents[1])
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(commands)], capture_output=True, text=True,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_inspect_and_convert_of_safetensors_and_pictures_never_import_torch(tmp_path):
    src = save_embedding(tmp_path / "in.safetensors", "<t>", np.random.default_rng(0).standard_normal((2, 768)),
                         format="kohya")
    out = tmp_path / "out"
    commands = [
        ["inspect", str(src)],
        ["convert", str(src), str(out / "k.safetensors"), "--to", "diffusers"],
        ["convert", str(src), str(out / "bf.safetensors"), "--to", "kohya", "--precision", "bfloat16"],
        ["inspect", str(out / "bf.safetensors")],
        ["convert", str(out / "bf.safetensors"), str(out / "pic.png"), "--to", "a1111"],
        ["inspect", str(out / "pic.png")],
    ]
    report = _run_cli(commands)
    assert report == {"codes": [0] * len(commands), "loaded": []}
    # what was written without torch reads back the same through the torch side
    assert load_embedding(out / "bf.safetensors").single.dtype == torch.bfloat16
    assert torch.equal(load_embedding(out / "bf.safetensors").single, load_embedding(src).single.bfloat16())

