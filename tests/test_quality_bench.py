"""The quality yardstick's pure parts (benchmarks/quality.py): judging compositions on rendered
toy-world pictures, counting objects, the tables, and how runs are set up."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _quality_judge as qj  # noqa: E402
import _quality_runs as qr  # noqa: E402
import _quality_table as qt  # noqa: E402

from tiforge.toy.world import Scene, judge, render  # noqa: E402


def scene(colour="purple", shape="star", brightness="dark", texture="striped", cx=16, cy=16, radius=9):
    return Scene(shape, colour, brightness, texture, "large", radius, cx, cy, 0.1)


def passed(image):
    verdict = judge(image)
    return {c.name for c in (qj.IDENTITY, *qj.COMPOSITIONS) if c.passes(verdict)}


def test_compositions_ask_for_the_star_and_their_background():
    assert passed(render(scene())) == {"identity", "dark striped"}
    assert passed(render(scene(brightness="light", texture="checkered"))) == {"identity", "light checkered"}
    # light checkered asks for the checkering only (the toy model rarely reaches "light" with it)
    assert passed(render(scene(brightness="grey", texture="checkered"))) == {"identity", "light checkered"}
    assert passed(render(scene(brightness="grey", texture="striped"))) == {"identity"}
    assert passed(render(scene(colour="red"))) == set()
    assert passed(render(scene(shape="circle"))) == set()


def test_share_is_the_fraction_of_pictures_that_pass():
    pictures = [render(scene()), render(scene(colour="red")), render(scene(texture="plain")), render(scene())]
    assert qj.share(pictures, qj.IDENTITY) == 0.75
    assert qj.share(pictures, qj.COMPOSITIONS[0]) == 0.5
    assert qj.COMPOSITIONS[0].prompt("<tok>") == "a <tok> on a dark striped background"


def test_count_objects_finds_each_separate_object():
    one = render(scene(cx=8, cy=8, radius=6))
    other = np.asarray(render(scene(colour="red", shape="circle", cx=24, cy=24, radius=6)))
    both = np.asarray(one).copy()
    both[17:, 17:] = other[17:, 17:]
    assert qj.count_objects(one) == 1
    assert qj.count_objects(Image.fromarray(both)) == 2
    assert qj.count_objects(Image.new("RGB", (32, 32), (120, 120, 120))) == 0


def records():
    rows = [{"method": qt.START, "seed": None, "step": 0, "identity": 0.0, "editability": 0.0, "dark striped": 0.0}]
    for method, values in (("tiforge baseline", (0.5, 0.7)), (qt.DIFFUSERS, (0.25, 0.25))):
        for seed, v in enumerate(values):
            rows.append({"method": method, "seed": seed, "step": 60, "identity": v, "editability": v / 2,
                         "dark striped": v})
    return rows


def test_side_by_side_gives_mean_and_sample_sd_over_seeds_ours_first():
    text = qt.side_by_side(records(), "tiforge baseline")
    lines = text.splitlines()
    assert lines[0] == ("| steps | identity, tiforge baseline / diffusers script | "
                        "editability, tiforge baseline / diffusers script |")
    assert lines[2] == "| 0 | 0.00 / 0.00 | 0.00 / 0.00 |"  # the shared start, one record
    assert lines[3] == "| 60 | 0.60 ± 0.14 / 0.25 ± 0.00 | 0.30 ± 0.07 / 0.12 ± 0.00 |"


def test_detailed_table_has_a_row_per_method_and_the_start_once():
    lines = qt.detailed(records(), ["dark striped"]).splitlines()
    assert lines[0] == "| steps | method | identity | editability | dark striped |"
    assert lines[2:] == ["| 0 | start | 0.00 | 0.00 | 0.00 |",
                         "| 60 | tiforge baseline | 0.60 ± 0.14 | 0.30 ± 0.07 | 0.60 ± 0.14 |",
                         "| 60 | diffusers script | 0.25 ± 0.00 | 0.12 ± 0.00 | 0.25 ± 0.00 |"]


def test_variants_are_set_overrides():
    assert qr.parse_variant("baseline=") == ("baseline", [])
    assert qr.parse_variant("norm=preserve_embedding_norm=true timestep_sampling=logit_normal") == (
        "norm", ["preserve_embedding_norm=true", "timestep_sampling=logit_normal"])
    for bad in ("baseline", "=a=1", "x=notakeyvalue"):
        with pytest.raises(ValueError):
            qr.parse_variant(bad)
    assert qr.tiforge_command(["--seed", "0"], ["a=1"]) == ["tiforge", "train", "-q", "--seed", "0", "--set", "a=1"]
    # flags outrank --set in tiforge: an overridden field leaves the shared line
    line = ["--learning_rate", "0.01", "--seed", "0"]
    assert qr.tiforge_command(line, ["optimizer.learning_rate=1e-3"]) == [
        "tiforge", "train", "-q", "--seed", "0", "--set", "optimizer.learning_rate=1e-3"]


def test_one_run_saves_at_every_budget_with_the_issue_settings(tmp_path):
    steps = [0, 60, 120, 200, 400]
    assert qr.save_every(steps) == 20
    line = qr.shared_line(Path("m"), Path("p"), tmp_path, steps, seed=2)
    flags = dict(zip(line[::2], line[1::2]))
    assert flags["--max_train_steps"] == "400" and flags["--save_steps"] == "20"
    assert (flags["--initializer_token"], flags["--num_vectors"], flags["--learning_rate"],
            flags["--train_batch_size"], flags["--seed"]) == ("dog", "2", "0.01", "6", "2")
    for step in (60, 120, 200):
        (tmp_path / f"learned_embeds-steps-{step}.safetensors").write_bytes(b"")
    (tmp_path / "learned_embeds.safetensors").write_bytes(b"")
    assert qr.saved_embeddings(tmp_path, steps) == {
        60: tmp_path / "learned_embeds-steps-60.safetensors", 120: tmp_path / "learned_embeds-steps-120.safetensors",
        200: tmp_path / "learned_embeds-steps-200.safetensors", 400: tmp_path / "learned_embeds.safetensors"}
    with pytest.raises(FileNotFoundError, match="step 80"):
        qr.saved_embeddings(tmp_path, [0, 80, 400])


def test_saved_results_merge_into_one_table_with_one_start():
    import quality

    first = {"seeds": 3, "records": records(), "timings": [{"seed": 0}], "words": {}, "probes": {}}
    later = {"seeds": 1, "timings": [{"seed": 0}], "records": [
        dict(records()[0]), {"method": "tiforge norm", "seed": 0, "step": 60, "identity": 1.0, "editability": 0.5,
                             "dark striped": 1.0}]}
    both = quality.merged([first, later])
    assert [r["method"] for r in both["records"]].count(qt.START) == 1
    assert both["seeds"] == 3 and len(both["timings"]) == 2 and len(first["records"]) == 5
    assert "| 60 | tiforge norm | 1.00 | 0.50 | 1.00 |" in qt.detailed(both["records"], ["dark striped"])
