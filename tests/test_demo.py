from pathlib import Path

from safetensors.torch import load_file

from tiforge.cli import main


def test_demo_runs_offline_and_says_where_things_are(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIFORGE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--steps", "6", "-q"]) == 0
    out = capsys.readouterr().out
    emb = Path(out.split("embedding:")[1].split()[0])
    assert emb.is_file() and load_file(emb)["<demo-toy>"].shape == (2, 32)
    grid = Path(out.split("latest grid:")[1].split()[0])
    assert grid.is_file()
    assert "random weights" in out and "tiforge train my.yaml" in out
