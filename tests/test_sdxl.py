"""SDXL textual inversion end to end on a tiny SDXL pipeline built locally: two text encoders, the
clip_l/clip_g file, SDXL's size/crop conditioning, family checks, single files, resume, the CLI."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from diffusers import StableDiffusionXLPipeline

import tiforge.training.recipe as train_module
from tiforge.frontends.cli import main
from tiforge.config.schema import ConfigError
from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import EmbeddingFileError, load_embedding
from tiforge.model.single_file_export import save_single_file
from tiforge.model.loading import ModelLoadError, load_sd_components
from tiforge.training.recipe import train

from conftest import SDXL, base_config


def run(cfg: dict):
    return train(config_from_dict(cfg), progress=False)


def sdxl_config(model, data, out, **overrides) -> dict:
    return base_config(model, data, out, **SDXL, **overrides)


@pytest.fixture(scope="module")
def single_file_sdxl(tiny_sdxl, tmp_path_factory):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    return save_single_file(pipe, tmp_path_factory.mktemp("single") / "tiny-sdxl.safetensors")


def test_sdxl_end_to_end_trains_both_encoders_and_writes_clip_l_clip_g(tiny_sdxl, image_dir, tmp_path, monkeypatch):
    captured = {}
    real_loader, real_loss = train_module.load_sd_components, train_module.denoising_loss

    def spy_loader(*args, **kwargs):
        captured["parts"] = parts = real_loader(*args, **kwargs)
        captured["tables"] = [te.get_input_embeddings().weight.detach().clone() for _, _, te in parts.text_encoders]
        return parts

    def spy_loss(*args, **kwargs):
        captured.setdefault("unet_kwargs", []).append(kwargs["unet_kwargs"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_sd_components", spy_loader)
    monkeypatch.setattr(train_module, "denoising_loss", spy_loss)
    cfg = sdxl_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=4, save_every_n_steps=2,
                      validation_prompts=["a photo of a <thing>"], negative_validation_prompts=["blurry"],
                      num_validation_images_per_prompt=1, num_validation_inference_steps=2,
                      enable_cpu_offload_during_validation=True)
    result = run(cfg)

    # kohya's SDXL layout, which kohya, A1111, ComfyUI and InvokeAI read
    assert result.embedding_path.name == "thing.safetensors"
    emb = load_embedding(result.embedding_path)
    assert emb.is_sdxl and emb.vectors["clip_l"].shape == (2, 32) and emb.vectors["clip_g"].shape == (2, 64)
    # both encoders' new vectors moved away from "toy"; every vocabulary row is bit-identical
    parts = captured["parts"]
    for (name, _, te), table in zip(parts.text_encoders, captured["tables"]):
        assert torch.equal(te.get_input_embeddings().base.weight, table), name
        assert not torch.allclose(emb.vectors[name][0], table[2445]), f"{name} vectors never moved"
    # pooled text embeds and size/crop ids reached the UNet: the 48x(48+8i) images, resized to 32
    # on the short side and center-cropped, give original (48, w) and crop left (round(w*2/3)-32)//2
    kwargs = captured["unet_kwargs"][0]["added_cond_kwargs"]
    assert kwargs["text_embeds"].shape == (2, 64) and kwargs["time_ids"].shape == (2, 6)
    expected = {(48.0, 48.0 + 8 * i, 0.0, float((round((48 + 8 * i) * 2 / 3) - 32) // 2), 32.0, 32.0) for i in range(4)}
    seen = {tuple(row) for kw in captured["unet_kwargs"] for row in kw["added_cond_kwargs"]["time_ids"].tolist()}
    assert seen <= expected and len(seen) >= 2
    # SDXL validation images, a checkpoint with the same layout
    assert (result.run_dir / "validation" / "final" / "grid.png").is_file()
    ckpt = result.run_dir / "checkpoints" / "checkpoint-step_00000002" / "thing.safetensors"
    assert load_embedding(ckpt).is_sdxl
    assert "SDXL model (text width 32 + 64)" in (result.run_dir / "train.log").read_text()


def test_sdxl_same_seed_is_bit_identical_and_cached_latents_keep_the_crops(tiny_sdxl, image_dir, tmp_path, monkeypatch):
    cfg = sdxl_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=3)
    a, b = (load_embedding(run(cfg).embedding_path).vectors for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in ("clip_l", "clip_g"))

    seen = []
    real = train_module.unet_conditioning
    monkeypatch.setattr(train_module, "unet_conditioning",
                        lambda enc, ids, batch, *rest: seen.append(batch["crop_top_left"].clone()) or real(enc, ids, batch, *rest))
    run({**cfg, "cache_vae_outputs": True})
    assert any(int(c[:, 1].max()) > 0 for c in seen), "cached items lost their crop coordinates"


def test_sdxl_resume_ends_bit_identical(tiny_sdxl, image_dir, tmp_path):
    cfg = sdxl_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=4, save_every_n_steps=2,
                      train_batch_size=1)
    full = run(cfg)
    expected = load_embedding(full.embedding_path).vectors
    resumed = run({**cfg, "resume_from_checkpoint": str(full.run_dir / "checkpoints" / "checkpoint-step_00000002")})
    assert resumed.run_dir == full.run_dir
    got = load_embedding(resumed.embedding_path).vectors
    assert all(torch.equal(got[k], expected[k]) for k in ("clip_l", "clip_g"))


def test_wrong_family_fails_at_load_saying_what_to_set(tiny_sd1, tiny_sdxl, image_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"is an SD 1.x/2.x model .*model must refer to an SDXL model"):
        run(sdxl_config(tiny_sd1, image_dir, tmp_path / "a"))
    with pytest.raises(ModelLoadError, match=r"is an SDXL model .*type: SDXL_TEXTUAL_INVERSION"):
        run(base_config(tiny_sdxl, image_dir, tmp_path / "b"))


def test_sdxl_single_file_offline_matches_folder_and_trains(tiny_sdxl, single_file_sdxl, image_dir, tmp_path):
    folder = load_sd_components(str(tiny_sdxl), sdxl=True)
    single = load_sd_components(str(single_file_sdxl), single_file_config=str(tiny_sdxl), sdxl=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    cfg = sdxl_config(single_file_sdxl, image_dir, tmp_path / "out", max_train_steps=1,
                      single_file_config=str(tiny_sdxl))
    assert run(cfg).global_step == 1
    # an SDXL file is recognised from its key names before anything is loaded
    with pytest.raises(ModelLoadError, match="is an SDXL model"):
        load_sd_components(str(single_file_sdxl), single_file_config=str(tiny_sdxl))


def test_sdxl_initializers_and_embedding_file_families(tiny_sd1, tiny_sdxl, image_dir, tmp_path):
    phrase = run(sdxl_config(tiny_sdxl, image_dir, tmp_path / "a", max_train_steps=1, initializer_token=None,
                             initial_phrase="small red plush toy"))
    first = load_embedding(phrase.embedding_path).vectors
    assert first["clip_l"].shape == (4, 32) and first["clip_g"].shape == (4, 64)

    cont = sdxl_config(tiny_sdxl, image_dir, tmp_path / "b", max_train_steps=1, initializer_token=None,
                       initial_embedding_file=str(phrase.embedding_path), optimizer={"learning_rate": 1e-9})
    second = load_embedding(run(cont).embedding_path).vectors
    assert all(torch.allclose(second[k], first[k], atol=1e-5) for k in first)

    sd_emb = run(base_config(tiny_sd1, image_dir, tmp_path / "c", max_train_steps=1)).embedding_path
    with pytest.raises(EmbeddingFileError, match="holds an SD 1.x/2.x embedding .*needs an SDXL embedding"):
        run({**cont, "initial_embedding_file": str(sd_emb)})
    with pytest.raises(EmbeddingFileError, match="holds an SDXL embedding .*cannot initialize an SD 1.x/2.x model"):
        run(base_config(tiny_sd1, image_dir, tmp_path / "d", initializer_token=None,
                        initial_embedding_file=str(phrase.embedding_path)))


def test_sdxl_config_rules_and_vae_override(tiny_sdxl, image_dir, tmp_path):
    with pytest.raises(ConfigError, match="save_format: diffusers: an SDXL embedding has clip_l and clip_g"):
        config_from_dict(sdxl_config(tiny_sdxl, image_dir, tmp_path, save_format="diffusers"))
    with pytest.raises(ConfigError, match=r"vae_dtype: unknown field \(it applies to SDXL only"):
        config_from_dict(base_config(tiny_sdxl, image_dir, tmp_path, vae_dtype="float32"))
    # a separate VAE (here: the model's own vae/ folder) in its own dtype
    result = run(sdxl_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=1, vae_model=str(tiny_sdxl),
                             vae_dtype="bfloat16"))
    assert result.global_step == 1
    with pytest.raises(ModelLoadError, match="vae_model .*config.json"):
        run(sdxl_config(tiny_sdxl, image_dir, tmp_path / "out", vae_model=str(image_dir)))


def test_cli_sdxl_flags_train_generate_and_inspect(tiny_sdxl, tiny_sd1, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--sdxl", f"--pretrained_model_name_or_path={tiny_sdxl}", f"--train_data_dir={image_dir}",
                 "--learnable_property=object", "--placeholder_token=<thing>", "--initializer_token=toy",
                 "--resolution=32", "--max_train_steps=2", "--train_batch_size=2", "--report_to=none",
                 "--no_half_vae", f"--output_dir={out}", "-q"])
    assert code == 0
    emb_path = capsys.readouterr().out.split("embedding: ")[1].split()[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the diffusers flags write into output_dir itself
    assert saved["type"] == "SDXL_TEXTUAL_INVERSION" and saved["vae_dtype"] == "float32"

    assert main(["inspect", emb_path, "--model", str(tiny_sdxl)]) == 0
    text = capsys.readouterr().out
    assert "norms[clip_g]" in text and "nearest to vector 0" in text
    assert main(["inspect", emb_path, "--model", str(tiny_sd1)]) == 0
    assert "is an SD 1.x/2.x model: this embedding does not fit it" in capsys.readouterr().out

    images = tmp_path / "generated"
    assert main(["generate", "--model", str(tiny_sdxl), "--embedding", emb_path, "--prompt", "a thing, <thing>",
                 "--token", "<thing>", "--steps", "2", "--width", "32", "--height", "32", "--out", str(images)]) == 0
    assert len(list(images.glob("*.png"))) == 1
    assert main(["generate", "--model", str(tiny_sd1), "--embedding", emb_path, "--prompt", "<thing>",
                 "--token", "<thing>", "--steps", "1", "--out", str(images)]) == 2
    assert "an SDXL embedding (clip_l + clip_g) does not fit this SD 1.x/2.x model" in capsys.readouterr().err


def test_cli_without_sdxl_names_the_flag(tiny_sdxl, image_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tiforge.cli", "train", f"--pretrained_model_name_or_path={tiny_sdxl}",
                           f"--train_data_dir={image_dir}", "--learnable_property=object", "--placeholder_token=<t>",
                           "--initializer_token=toy", "--max_train_steps=1", f"--output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "is an SDXL model" in done.stderr and "--sdxl" in done.stderr
    assert "Traceback" not in done.stderr
    json.dumps(done.stderr)  # the message is plain text
