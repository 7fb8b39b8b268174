"""benchmarks/gpu_check.py must not rot while no GPU runs it: its tiny CPU form runs here."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_runs_its_checks_on_tiny_models_on_the_cpu(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch

    import gpu_check

    real_is_available = torch.cuda.is_available
    try:
        code = gpu_check.main(["--cpu", "--tiny", "--steps", "2"])
    finally:
        torch.cuda.is_available = real_is_available  # --cpu hides the GPU for the rest of its process
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith(("sd15 ", "sdxl "))]
    assert len(rows) == len(gpu_check.CASES)
    ran = [r for r in rows if r.endswith(" ok")]
    # on a CPU: both families, both mixed precisions, checkpointing on and off, a validation pass
    assert {r.split()[0] for r in ran} == {"sd15", "sdxl"} and {r.split()[1] for r in ran} == {"fp16", "bf16"}
    assert any("validate" in r for r in ran) and any(" no-ckpt " in r for r in ran)
    assert all(r.endswith(" ok") or "skipped: " in r for r in rows)
    assert "FAILED" not in out and "UNet TFLOP/s" in out
    del sys.modules["gpu_check"]
