"""The side-by-side benchmark's own arithmetic and its step timer (benchmarks/vs_diffusers.py)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _step_timer  # noqa: E402
import vs_diffusers  # noqa: E402


def test_summary_times_steps_after_the_first_and_start_up_from_the_spawn():
    record = {"steps": [10.0, 12.0, 13.0, 15.0, 20.0], "caching": [[4.0, 5.5], [6.0, 6.5]]}
    got = vs_diffusers.summarise(record, spawned_at=1.0, maxrss_kib=3 * 2**19)
    assert got == {"step_s": 2.0, "startup_s": 9.0, "peak_gib": 1.5, "steps": 5, "caching_s": 2.0}
    assert vs_diffusers.summarise({"steps": [2.0, 3.0]}, 0.0, 0)["caching_s"] is None
    with pytest.raises(ValueError, match="at least 2"):
        vs_diffusers.summarise({"steps": [2.0]}, 0.0, 0)


def test_tables_give_speed_as_diffusers_over_tiforge_and_memory_the_other_way():
    cells = {}
    for tool, step, peak in (("diffusers", [4.0, 5.0], 6.0), ("tiforge", [2.0, 2.0], 3.0)):
        for rnd, s in enumerate(step):
            run = vs_diffusers.Run("sd15", "same", tool, rnd, step_s=s, startup_s=30.0, peak_gib=peak, steps=6)
            cells.setdefault(("sd15", "same", tool), vs_diffusers.Cell()).runs.append(run)
    text = vs_diffusers.tables(cells)
    assert "| sd15 | same | 4.500 | 2.000 | 2.25x | 30.0 s | 30.0 s | 6.00 GiB | 3.00 GiB | 0.50x |" in text
    assert "| sd15 | same | diffusers | 4.000, 5.000 | 1.25 |" in text


def test_step_timer_records_every_optimizer_step_of_a_script(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the launcher hands the script its own argv
    monkeypatch.setattr(_step_timer, "_relax_min_version", lambda: None)  # importing diffusers takes seconds
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        "p = torch.nn.Parameter(torch.zeros(2))\n"
        "opt = torch.optim.SGD([p], lr=0.1)\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    p.sum().backward(); opt.step()\n")
    out = tmp_path / "times.json"
    assert _step_timer.main([str(out), "script", str(script), "3"]) == 0
    record = json.loads(out.read_text())
    assert len(record["steps"]) == 3 and record["exit_code"] == 0
    assert record["launcher_start"] <= record["steps"][0] <= record["steps"][1] <= record["steps"][2]
