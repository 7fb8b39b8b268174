import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from tiforge.config.loading import config_from_dict
from tiforge.model.single_file_export import save_single_file
from tiforge.model.loading import ModelLoadError, load_sd_components
from tiforge.training.recipe import train

from conftest import base_config


@pytest.fixture(scope="module")
def single_file_sd1(tiny_sd1, tmp_path_factory):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    return save_single_file(pipe, tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors")


def test_local_folder(tiny_sd1):
    parts = load_sd_components(str(tiny_sd1))
    assert parts.text_width == 32 and parts.noise_scheduler.config.prediction_type == "epsilon"


def test_single_file_offline_with_local_config_matches_folder(tiny_sd1, single_file_sd1):
    folder = load_sd_components(str(tiny_sd1))
    single = load_sd_components(str(single_file_sd1), single_file_config=str(tiny_sd1))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert single.tokenizer("a photo").input_ids == folder.tokenizer("a photo").input_ids


def test_training_from_a_single_file(tiny_sd1, single_file_sd1, image_dir, tmp_path):
    cfg = base_config(single_file_sd1, image_dir, tmp_path / "out", max_train_steps=2, single_file_config=str(tiny_sd1))
    assert train(config_from_dict(cfg), progress=False).global_step == 2


def test_single_file_offline_without_config_says_what_to_set(single_file_sd1):
    with pytest.raises(ModelLoadError, match="set single_file_config to a local diffusers-format folder"):
        load_sd_components(str(single_file_sd1))


def test_bad_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder, and not a hub id"):
        load_sd_components(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="without model_index.json is not a diffusers model folder"):
        load_sd_components(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="checkpoint file"):
        load_sd_components(str(tmp_path / "notes.txt"))


def test_sdxl_folder_is_refused_with_what_to_set(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match="is an SDXL model .*type: SDXL_TEXTUAL_INVERSION"):
        load_sd_components(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not fetch it from the Hugging Face hub"):
        load_sd_components("someone/some-model-that-is-not-cached")


def test_ckpt_single_file(tiny_sd1, single_file_sd1, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(single_file_sd1), "global_step": 1}, ckpt)
    parts = load_sd_components(str(ckpt), single_file_config=str(tiny_sd1))
    folder = load_sd_components(str(tiny_sd1))
    assert torch.equal(parts.unet.conv_in.weight, folder.unet.conv_in.weight)


def test_sd2_single_file_with_openclip_layout_matches_folder(tiny_sd2, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd2, safety_checker=None, local_files_only=True)
    path = save_single_file(pipe, tmp_path / "tiny-sd2.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in f.keys()
    folder = load_sd_components(str(tiny_sd2))
    single = load_sd_components(str(path), single_file_config=str(tiny_sd2))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
