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


# ---------------------------------------------------------------------------------------- training

def initial(model_dir, word):
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    return enc.get_input_embeddings().weight[tok.encode(word, add_special_tokens=False)[0]].detach()


def test_two_embeddings_train_in_one_loop_each_at_its_own_rate(tiny_sd1, tmp_path):
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
    moved = (style.single[0] - initial(tiny_sd1, "painting")).abs().max().item()
    assert 0 < moved <= 3 * 1e-6 * 1.01, moved  # Adam moves a vector by at most ~lr per step
    assert (thing.single - initial(tiny_sd1, "toy")).abs().max().item() > 1e-3
    checkpoint = result.run_dir / "checkpoints" / "checkpoint-step_00000002"
    assert {p.name for p in checkpoint.glob("*.safetensors")} == {"thing.safetensors", "style.safetensors"}
    assert list((result.run_dir / "validation" / "final").rglob("*.png"))


def test_stop_after_steps_freezes_the_vectors_exactly(tiny_sd1, tmp_path):
    data = captioned(tmp_path)
    cfg = several(tiny_sd1, data, tmp_path / "out", {**STYLE, "stop_after_steps": 2}, max_train_steps=4,
                  save_every_n_steps=2)
    result = train(config_from_dict(cfg), progress=False)
    at_2 = result.run_dir / "checkpoints" / "checkpoint-step_00000002"
    style_2, thing_2 = load_embedding(at_2 / "style.safetensors").single, load_embedding(at_2 / "thing.safetensors").single
    style_end, thing_end = (load_embedding(p).single for p in reversed(result.embedding_paths))
    assert not torch.equal(style_2, initial(tiny_sd1, "painting")[None])  # it trained up to step 2
    assert torch.equal(style_end, style_2)  # and not one bit since
    assert not torch.equal(thing_end, thing_2)  # while the first embedding went on
