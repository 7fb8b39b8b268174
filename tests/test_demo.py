from pathlib import Path

from safetensors.torch import load_file

from tiforge.frontends.cli import main


def test_demo_runs_offline_and_reports_the_judge(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIFORGE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--steps", "20", "-q"]) == 0
    out = capsys.readouterr().out
    emb = Path(out.split("embedding:")[1].split()[0])
    assert emb.is_file() and load_file(emb)["emb_params"].shape == (2, 64)
    assert "before training:" in out and "after training:" in out and "show a purple star" in out
    after_grid = Path(out.split("after training:")[1].split("(")[1].split(")")[0])
    assert after_grid.is_file()
    assert "tiforge train my.yaml" in out
