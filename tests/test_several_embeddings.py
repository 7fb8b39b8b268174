"""Several embeddings in one run (issue 20): config checks, one loop for all, per-embedding learning
rates, stop_after_steps, their files, and exact resume."""

import pytest
import torch

from tiforge.config.loading import config_from_dict
from tiforge.config.schema import ConfigError
from tiforge.embeddings.files import load_embedding
from tiforge.training.recipe import train

from conftest import base_config, make_images

STYLE = {"placeholder_token": "<style>", "initializer_token": "painting", "num_vectors": 1}


def captioned(tmp_path):
    """Pictures whose captions name the subject, the style, or both."""
    return make_images(tmp_path / "pics", 4, captions=["a <thing>", "a picture in <style>", "a <thing> in <style>"])


def several(model, data, out, *more, **overrides):
    cfg = base_config(model, data, out, **overrides)
    cfg["data_loader"]["dataset"] = {"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(data)}
    cfg["data_loader"].pop("caption_preset")
    cfg["additional_embeddings"] = list(more)
    return cfg


# ------------------------------------------------------------------------------------------ config

def problems_of(tiny, tmp_path, *more, **overrides):
    with pytest.raises(ConfigError) as err:
        config_from_dict(several(tiny, tmp_path, tmp_path / "out", *more, **overrides))
    return str(err.value)


def test_config_names_the_entry_at_fault(tmp_path):
    msg = problems_of("m", tmp_path, STYLE, {"placeholder_token": "<style>", "initializer_token": "x"})
    assert "additional_embeddings[1].placeholder_token: '<style>' is already additional_embeddings[0]" in msg
    msg = problems_of("m", tmp_path, {"placeholder_token": "<thing>2", "initial_phrase": "a b"})
    assert "additional_embeddings[0].placeholder_token" in msg and "overlap" in msg
    msg = problems_of("m", tmp_path, {"placeholder_token": "<s>", "initializer_token": "a", "initial_phrase": "b"})
    assert "additional_embeddings[0]: set exactly one" in msg
    msg = problems_of("m", tmp_path, {**STYLE, "stop_after_steps": 9})
    assert "additional_embeddings[0].stop_after_steps: 9 is past the run's end (max_train_steps 4)" in msg
    msg = problems_of("m", tmp_path, {**STYLE, "learning_rate": 0})
    assert "additional_embeddings[0].learning_rate" in msg


def test_onetrainer_key_names_are_read(tmp_path):
    cfg = several("m", tmp_path, tmp_path / "out", {"placeholder": "<s>", "initial_embedding_text": "oil paint",
                                                    "token_count": 3, "stop_training_after": 2})
    entry = config_from_dict(cfg).additional_embeddings[0]
    assert (entry.placeholder_token, entry.initial_phrase, entry.num_vectors, entry.stop_after_steps) == \
        ("<s>", "oil paint", 3, 2)


# ------------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def text_side(tiny_sd1):
    """The tiny model's tokenizer and text encoder, loaded once for this file."""
    from transformers import CLIPTextModel, CLIPTokenizer

    return (CLIPTokenizer.from_pretrained(tiny_sd1, subfolder="tokenizer"),
            CLIPTextModel.from_pretrained(tiny_sd1, subfolder="text_encoder"))


def initial(text_side, word):
    tokenizer, encoder = text_side
    return encoder.get_input_embeddings().weight[tokenizer.encode(word, add_special_tokens=False)[0]].detach()


def test_each_placeholder_has_its_own_rows_and_gradient(text_side):
    import copy

    from tiforge.model.text_conditioning import PromptEncoder

    tokenizer, text_encoder = (copy.deepcopy(part) for part in text_side)
    enc = PromptEncoder([("text_encoder", tokenizer, text_encoder)], sdxl=False)
    first, second = torch.randn(2, 32), torch.randn(3, 32)
    enc.add_placeholder("<a>", {"text_encoder": first})
    b = enc.add_placeholder("<b>", {"text_encoder": second})
    assert b.ids == (49410, 49411, 49412) and [p.shape[0] for p in enc.trainable()] == [2, 3]
    rows = enc.text_encoders[0].get_input_embeddings()(torch.tensor([[49408, 49409, 49410, 49412, 320]]))
    assert torch.equal(rows[0, :2], first) and torch.equal(rows[0, 2], second[0]) and torch.equal(rows[0, 3], second[2])
    hidden, _ = enc.encode(["a photo of <b>"])  # a prompt naming only the second: only its vectors learn
    hidden.square().sum().backward()
    grad_a, grad_b = (p.grad for p in enc.trainable())
    assert grad_a.abs().sum() == 0 and (grad_b.abs().sum(dim=1) > 0).all()


# ---------------------------------------------------------------------------------------- training

def test_two_embeddings_train_in_one_loop_each_at_its_own_rate(tiny_sd1, text_side, tmp_path):
    data = captioned(tmp_path)
    slow = {**STYLE, "learning_rate": 1e-6}
    cfg = several(tiny_sd1, data, tmp_path / "out", slow, max_train_steps=3, save_every_n_steps=2,
                  validation_prompts=["a <thing> in <style>"], num_validation_images_per_prompt=1,
                  num_validation_inference_steps=1)
    result = train(config_from_dict(cfg), progress=False)
    thing, style = (load_embedding(p) for p in result.embedding_paths)
    assert [p.name for p in result.embedding_paths] == ["thing.safetensors", "style.safetensors"]
    assert result.embedding_path == result.embedding_paths[0]
    assert thing.token == "<thing>" and style.token == "<style>" and style.single.shape == (1, 32)
    moved = (style.single[0] - initial(text_side, "painting")).abs().max().item()
    assert 0 < moved <= 3 * 1e-6 * 1.01, moved  # Adam moves a vector by at most ~lr per step
    assert (thing.single - initial(text_side, "toy")).abs().max().item() > 1e-3
    checkpoint = result.run_dir / "checkpoints" / "checkpoint-step_00000002"
    assert {p.name for p in checkpoint.glob("*.safetensors")} == {"thing.safetensors", "style.safetensors"}
    assert list((result.run_dir / "validation" / "final").rglob("*.png"))


def test_stop_after_steps_freezes_the_vectors_exactly(tiny_sd1, text_side, tmp_path):
    data = captioned(tmp_path)
    cfg = several(tiny_sd1, data, tmp_path / "out", {**STYLE, "stop_after_steps": 2}, max_train_steps=4,
                  save_every_n_steps=2)
    result = train(config_from_dict(cfg), progress=False)
    at_2 = result.run_dir / "checkpoints" / "checkpoint-step_00000002"
    style_2, thing_2 = load_embedding(at_2 / "style.safetensors").single, load_embedding(at_2 / "thing.safetensors").single
    style_end, thing_end = (load_embedding(p).single for p in reversed(result.embedding_paths))
    assert not torch.equal(style_2, initial(text_side, "painting")[None])  # it trained up to step 2
    assert torch.equal(style_end, style_2)  # and not one bit since
    assert not torch.equal(thing_end, thing_2)  # while the first embedding went on


def test_resume_restores_every_embedding_bit_identical(tiny_sd1, tmp_path):
    data = make_images(tmp_path / "pics", 4, captions=["a <thing>", "a picture in <style>", "<thing> with <pat>"])
    pattern = {"placeholder_token": "<pat>", "initial_phrase": "striped cloth", "stop_after_steps": 1,
               "learning_rate": 3e-2}
    cfg = several(tiny_sd1, data, tmp_path / "out", {**STYLE, "stop_after_steps": 3}, pattern, max_train_steps=5,
                  save_every_n_steps=2, train_batch_size=1)
    full = train(config_from_dict(cfg), progress=False)
    expected = [load_embedding(p).single.clone() for p in full.embedding_paths]
    assert len(expected) == 3 and expected[2].shape == (2, 32)
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000002"
    resumed = train(config_from_dict({**cfg, "resume_from_checkpoint": str(half)}), progress=False)
    assert resumed.embedding_paths == full.embedding_paths
    for path, want in zip(resumed.embedding_paths, expected):
        assert torch.equal(load_embedding(path).single, want), path.name


# -------------------------------------------------------------------------------- captions, flags

def test_templates_name_the_token_of_the_pictures_folder(tmp_path):
    from pathlib import Path

    from tiforge.data.captions import Captioner, check_every_token_trained
    from tiforge.data.sources import DatasetError, Record
    from tiforge.model.placeholders import Placeholder

    from conftest import base_config as cfg_of

    thing = Placeholder("<thing>", ("<thing>",), (1,))
    style = Placeholder("<my-style>", ("<my-style>", "<my-style>_1"), (2, 3))
    dl = config_from_dict(cfg_of("m", tmp_path, tmp_path, data_loader__caption_templates=["a photo of {}"],
                                 data_loader__caption_preset=None)).data_loader
    captioner = Captioner(dl, thing, style)
    subject, styled = Record(Path("/d/pics/a.png"), None), Record(Path("/d/10_my-style/b.png"), None)
    assert captioner(None, None, subject) == "a photo of <thing>"
    assert captioner(None, None, styled) == "a photo of <my-style> <my-style>_1"
    assert captioner.expand("<thing> in <my-style>") == "<thing> in <my-style> <my-style>_1"
    check_every_token_trained([subject, styled], [thing, style], uses_templates=True)
    with pytest.raises(DatasetError, match="'<my-style>': no caption names it"):
        check_every_token_trained([subject], [thing, style], uses_templates=True)
    with pytest.raises(DatasetError, match="'<thing>': no caption names it"):  # every picture is the style's
        check_every_token_trained([styled], [thing, style], uses_templates=True)
    check_every_token_trained([Record(Path("/d/c.png"), "<thing> in <my-style>")], [thing, style], False)


def test_placeholder_flag_adds_one_embedding_each():
    from tiforge.config.flags import apply_flag_overrides, flags_to_overrides

    flags = flags_to_overrides(["--placeholder", "<cat>:dog:3", "--placeholder=<style>:oil painting:lr=5e-3:stop=7",
                                "--placeholder", "<old>:old/emb.safetensors"])
    fresh = apply_flag_overrides({}, flags)
    assert (fresh["placeholder_token"], fresh["initializer_token"], fresh["num_vectors"]) == ("<cat>", "dog", "3")
    assert fresh["additional_embeddings"] == [
        {"placeholder_token": "<style>", "initial_phrase": "oil painting", "learning_rate": "5e-3",
         "stop_after_steps": "7"},
        {"placeholder_token": "<old>", "initial_embedding_file": "old/emb.safetensors"}]
    with_yaml = apply_flag_overrides({"placeholder_token": "<me>", "additional_embeddings": [{"placeholder": "<x>"}]},
                                     flags_to_overrides(["--placeholder", "<cat>:dog"]))
    assert with_yaml["placeholder_token"] == "<me>"
    assert with_yaml["additional_embeddings"] == [{"placeholder": "<x>"}, {"placeholder_token": "<cat>",
                                                                            "initializer_token": "dog"}]
    more = apply_flag_overrides({}, flags_to_overrides(["--additional_embeddings", "<a>:x", "--placeholder", "<b>:y"]))
    assert more["placeholder_token"] == "<b>" and more["additional_embeddings"][0]["placeholder_token"] == "<a>"
    with pytest.raises(ConfigError, match="expected TOKEN:INIT"):
        flags_to_overrides(["--placeholder", "<cat>"])


# ------------------------------------------------------------------------------------------ queue

def test_train_many_loads_once_reports_a_failure_and_trains_the_rest_exactly(tiny_sd1, tmp_path, capsys,
                                                                             monkeypatch):
    import yaml

    import tiforge.model.loading as loading
    from tiforge.frontends.cli import main

    concepts = tmp_path / "concepts"
    for name in ("apple", "broken", "cherry"):
        make_images(concepts / name, 2)
    (concepts / "broken" / "concept.yaml").write_text("initializer_token: two words\n")
    (concepts / "cherry" / "concept.yaml").write_text("num_vectors: 1\ndata_loader:\n  caption_preset: style\n")
    # validation keeps the VAE's decoder only: the queue must give the next concept its encoder back
    quick = dict(max_train_steps=2, validation_prompts=["a photo"], num_validation_images_per_prompt=1,
                 num_validation_inference_steps=1)
    base = base_config(tiny_sd1, tmp_path / "unused", tmp_path / "out", **quick)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    loads = []
    real_load = loading._load
    monkeypatch.setattr(loading, "_load", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    code = main(["train-many", str(tmp_path / "base.yaml"), "--concepts", str(concepts), "-q"])
    out = capsys.readouterr().out
    assert code == 1 and len(loads) == 1
    assert "train-many: 2 of 3 concept(s) trained" in out
    assert "FAILED  broken: initializer_token 'two words' must be a single token" in out
    apple, cherry = (next((tmp_path / "out" / n).glob(f"*/{n}.safetensors")) for n in ("apple", "cherry"))
    assert str(apple) in out and str(cherry) in out and load_embedding(cherry).token == "<cherry>"
    # the third concept, on a model kept through two runs, trains exactly as on a fresh load
    alone = base_config(tiny_sd1, concepts / "cherry", tmp_path / "alone", **quick,
                        placeholder_token="<cherry>", num_vectors=1, data_loader__caption_preset="style")
    expected = load_embedding(train(config_from_dict(alone), progress=False).embedding_path).single
    assert torch.equal(load_embedding(cherry).single, expected)


# ------------------------------------------------------------------------------------- console UI

def test_console_ui_loads_and_shows_further_embeddings(tmp_path):
    import asyncio

    import yaml
    from textual.widgets import Input

    from tiforge.frontends.console_ui import TrainerUI, config_to_form, form_to_config

    cfg = several("m", tmp_path, tmp_path / "out", {**STYLE, "num_vectors": 2, "learning_rate": 5e-3},
                  {"placeholder_token": "<pat>", "initial_phrase": "striped cloth", "stop_after_steps": 3},
                  lr_scheduler="cosine_with_restarts")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    values, left_out = config_to_form(str(tmp_path / "run.yaml"))
    assert values["more_embeddings"] == "<style>:painting:2:lr=0.005; <pat>:striped cloth:stop=3"
    # the form trains a folder of pictures with caption templates: a captioned dataset is said to be left out
    assert values["trigger"] == "<thing>"
    assert left_out == ["data_loader.dataloader_num_workers", "data_loader.dataset.type"]
    again = config_from_dict(form_to_config({**values, "output_dir": str(tmp_path / "out")}), "form")
    assert [e.model_dump() for e in again.additional_embeddings] == \
        [e.model_dump() for e in config_from_dict(cfg).additional_embeddings]

    async def drive():
        app = TrainerUI(prefs_path=tmp_path / "prefs.yaml", models=[])
        async with app.run_test(size=(140, 60)) as pilot:
            app.query_one("#load_path", Input).value = str(tmp_path / "run.yaml")
            await pilot.press("ctrl+o")
            await pilot.pause()
            return app.query_one("#more_embeddings", Input).value, app.validate_form()

    shown, config = asyncio.run(drive())
    assert shown == values["more_embeddings"]
    assert config is not None and config.all_placeholder_tokens == ["<thing>", "<style>", "<pat>"]


# ------------------------------------------------------------------------------- layouts, families

def test_diffusers_layout_gives_each_embedding_a_folder_diffusers_loads(tiny_sd1, tmp_path):
    from diffusers import StableDiffusionPipeline

    data = captioned(tmp_path)
    cfg = several(tiny_sd1, data, tmp_path / "out", STYLE, max_train_steps=2, output_layout="diffusers",
                  save_format="diffusers")
    result = train(config_from_dict(cfg), progress=False)
    out = tmp_path / "out"
    assert result.embedding_paths == [out / "learned_embeds.safetensors", out / "style" / "learned_embeds.safetensors"]
    assert (out / "token_identifier.txt").read_text().strip() == "<thing>"
    assert (out / "style" / "token_identifier.txt").read_text().strip() == "<style>"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(out)
    pipe.load_textual_inversion(out / "style")
    table = pipe.text_encoder.get_input_embeddings().weight
    style_id = pipe.tokenizer.convert_tokens_to_ids("<style>")
    assert torch.equal(table[style_id], load_embedding(result.embedding_paths[1]).vectors["<style>"][0])


def test_sdxl_trains_several_embeddings_for_both_encoders(tiny_sdxl, tmp_path):
    data = captioned(tmp_path)
    cfg = several(tiny_sdxl, data, tmp_path / "out", STYLE, max_train_steps=2, type="SDXL_TEXTUAL_INVERSION")
    result = train(config_from_dict(cfg), progress=False)
    style = load_embedding(result.embedding_paths[1])
    assert style.token == "<style>" and set(style.vectors) == {"clip_l", "clip_g"}
    assert style.vectors["clip_l"].shape[0] == 1 and load_embedding(result.embedding_paths[0]).vectors["clip_g"].shape[0] == 2


def test_kohya_layout_saves_and_prunes_every_embeddings_snapshots(tiny_sd1, tmp_path):
    data = captioned(tmp_path)
    cfg = several(tiny_sd1, data, tmp_path / "out", STYLE, max_train_steps=4, output_layout="kohya",
                  save_every_n_steps=1, save_state=False, save_last_n_steps=1)
    train(config_from_dict(cfg), progress=False)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    # kohya keeps the saves of the last N steps: at step 3, those of steps 2 and 3
    assert files == [f"{name}{suffix}.safetensors" for name in ("style", "thing")
                     for suffix in ("-step00000002", "-step00000003", "")]


def test_queue_goes_on_after_a_failure_and_stops_on_ctrl_c():
    from types import SimpleNamespace

    from tiforge.training.interrupts import TrainingStopped
    from tiforge.training.queue import Concept, summary, train_queue

    def fails():
        raise ConfigError("b.yaml: config file not found")

    def interrupted(_):
        raise TrainingStopped("Training interrupted.", 130)

    done = SimpleNamespace(embedding_paths=["a.safetensors"], embedding_path="a.safetensors", global_step=3,
                           final_loss=0.5)
    runs = iter([lambda _: done, interrupted])
    concepts = [Concept("a", lambda: "cfg"), Concept("b", fails), Concept("c", lambda: "cfg"),
                Concept("d", lambda: "cfg")]
    outcomes = train_queue(concepts, lambda config: next(runs)(config), announce=lambda _: None)
    assert [(o.label, o.ok) for o in outcomes] == [("a", True), ("b", False), ("c", False), ("d", False)]
    text = summary(outcomes)
    assert "1 of 4 concept(s) trained" in text and "FAILED  b: b.yaml: config file not found" in text
    assert "FAILED  c: Training interrupted." in text and "FAILED  d: not started (interrupted)" in text
