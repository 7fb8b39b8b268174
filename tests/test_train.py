"""End-to-end training runs on tiny SD1/SD2 pipelines built locally."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tiforge.training.recipe as train_module
from tiforge.frontends.cli import main
from tiforge.config.schema import ConfigError
from tiforge.config.loading import config_from_dict
from tiforge.data.sources import DatasetError
from tiforge.embeddings.files import EmbeddingFileError, load_embedding
from tiforge.training.recipe import train

from conftest import base_config, make_images


def run(cfg: dict):
    return train(config_from_dict(cfg), progress=False)


def test_sd1_end_to_end_outputs_and_frozen_vocabulary(tiny_sd1, image_dir, tmp_path, monkeypatch):
    captured = {}
    real_loader = train_module.load_sd_components

    def spy(*args, **kwargs):
        captured["parts"] = parts = real_loader(*args, **kwargs)
        captured["table"] = parts.text_encoder.get_input_embeddings().weight.detach().clone()
        return parts

    monkeypatch.setattr(train_module, "load_sd_components", spy)
    cfg = base_config(
        tiny_sd1, image_dir, tmp_path / "out",
        max_train_steps=6, save_every_n_steps=2, max_checkpoints=1, validate_every_n_steps=3,
        validation_prompts=["a photo of a <thing>", "<thing> on a beach"],
        negative_validation_prompts=["blurry", ""],
        num_validation_images_per_prompt=2, num_validation_inference_steps=2, report_to="tensorboard",
    )
    result = run(cfg)

    assert result.global_step == 6
    assert result.run_dir.parent == tmp_path / "out"
    # the learned embedding, named after the placeholder, in the kohya layout every tool loads
    assert result.embedding_path == result.run_dir / "thing.safetensors"
    tensors = load_file(result.embedding_path)
    tensors["<thing>"] = tensors.pop("emb_params")
    assert list(tensors) == ["<thing>"] and tensors["<thing>"].shape == (2, 32)
    assert tensors["<thing>"].dtype == torch.float32
    # every original vocabulary row is bit-identical after training
    te = captured["parts"].text_encoder
    assert torch.equal(te.get_input_embeddings().base.weight, captured["table"])
    assert not torch.equal(tensors["<thing>"][0], captured["table"][2445]), "vectors never moved from 'toy'"
    # checkpoints: steps 2 and 4 were saved; max_checkpoints=1 kept only the newest
    ckpts = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-step_00000004"]
    ckpt = load_file(result.run_dir / "checkpoints" / ckpts[0] / "thing.safetensors")["emb_params"]
    assert not torch.equal(ckpt, tensors["<thing>"])
    # validation images and a grid at step 3 and at the end
    for label in ("step_00000003", "final"):
        folder = result.run_dir / "validation" / label
        assert sorted(p.name for p in folder.iterdir()) == [
            "grid.png", "prompt00_image00.png", "prompt00_image01.png", "prompt01_image00.png", "prompt01_image01.png"
        ]
    # resolved config, text log, tensorboard events
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["num_vectors"] == 2 and saved["model"] == str(tiny_sd1)
    assert "embedding saved" in (result.run_dir / "train.log").read_text()
    assert list((result.run_dir / "logs").rglob("events.out.tfevents.*"))


def _vectors(result):
    return load_embedding(result.embedding_path).single  # whichever layout the run wrote


@pytest.mark.parametrize("cached", [False, True])
def test_same_seed_gives_bit_identical_embedding(tiny_sd1, image_dir, tmp_path, cached):
    extra = {"data_loader__random_flip": True} if cached else {"data_loader__random_flip": True,
                                                               "data_loader__center_crop": False}
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", cache_vae_outputs=cached, max_train_steps=5, **extra)
    a, b = _vectors(run(cfg)), _vectors(run(cfg))
    assert torch.equal(a, b)
    c = _vectors(run({**cfg, "seed": 4}))
    assert not torch.equal(a, c)


def test_gradient_checkpointing_does_not_change_the_result(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3)
    plain = _vectors(run(cfg))
    checkpointed = _vectors(run({**cfg, "gradient_checkpointing": True}))
    assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_epochs_and_gradient_accumulation_count_updates(tiny_sd1, image_dir, tmp_path):
    # 4 images, batch 1, accumulation 2 -> 2 updates per epoch; 3 epochs -> 6 steps
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=None, max_train_epochs=3,
                      train_batch_size=1, gradient_accumulation_steps=2, save_every_n_epochs=1, max_checkpoints=5)
    result = run(cfg)
    assert result.global_step == 6
    # epoch checkpoints for epochs 1 and 2; the last epoch is the final embedding
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == [
        "checkpoint-epoch_00000001", "checkpoint-epoch_00000002"
    ]


def test_scale_lr_multiplies_by_batch_and_accumulation(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1, scale_lr=True,
                      gradient_accumulation_steps=2, train_batch_size=2)
    result = run(cfg)
    assert "lr 0.04" in (result.run_dir / "train.log").read_text()  # 1e-2 x 2 x 2 x 1 process


@pytest.mark.parametrize(
    "scheduler", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
)
def test_every_lr_scheduler_trains(tiny_sd1, image_dir, tmp_path, scheduler):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3, lr_scheduler=scheduler,
                      lr_warmup_steps=1, report_to="tensorboard")
    assert run(cfg).global_step == 3


def test_sd2_infers_v_prediction_and_can_override(tiny_sd2, image_dir, tmp_path):
    result = run(base_config(tiny_sd2, image_dir, tmp_path / "a", max_train_steps=2))
    assert _vectors(result).shape == (2, 48)
    assert "prediction_type v_prediction" in (result.run_dir / "train.log").read_text()
    forced = run(base_config(tiny_sd2, image_dir, tmp_path / "b", max_train_steps=2, prediction_type="epsilon"))
    assert "prediction_type epsilon" in (forced.run_dir / "train.log").read_text()
    assert not torch.equal(_vectors(result), _vectors(forced))


def test_bfloat16_weights_keep_fp32_vectors(tiny_sd1, image_dir, tmp_path):
    result = run(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, weight_dtype="bfloat16",
                             min_snr_gamma=None, max_grad_norm=1.0))
    vec = _vectors(result)
    assert vec.dtype == torch.float32 and torch.isfinite(vec).all()


def test_initial_phrase_sets_vector_count(tiny_sd1, image_dir, tmp_path):
    result = run(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1, initializer_token=None,
                             initial_phrase="small red plush toy", num_vectors=1))
    assert _vectors(result).shape == (4, 32)
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["num_vectors"] == 4


def test_initial_embedding_file_continues_and_checks_width(tiny_sd1, tiny_sd2, image_dir, tmp_path):
    # the diffusers layout names its token, so a file of another token is caught
    first = run(base_config(tiny_sd1, image_dir, tmp_path / "a", max_train_steps=2, save_format="diffusers"))
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "b", max_train_steps=1, initializer_token=None,
                      initial_embedding_file=str(first.embedding_path), optimizer={"learning_rate": 1e-9})
    second = run(cfg)
    assert torch.allclose(_vectors(second), _vectors(first), atol=1e-5)

    wrong_token = {**cfg, "placeholder_token": "<other>"}
    with pytest.raises(EmbeddingFileError, match="holds token '<thing>' but placeholder_token is '<other>'"):
        run(wrong_token)
    sd2_emb = run(base_config(tiny_sd2, image_dir, tmp_path / "c", max_train_steps=1)).embedding_path
    with pytest.raises(EmbeddingFileError, match=r"Cannot load embedding for .*token dimension 48 .* token dimension 32"):
        run({**cfg, "initial_embedding_file": str(sd2_emb)})


def test_caption_dir_dataset_needs_the_placeholder(tiny_sd1, tmp_path):
    none = make_images(tmp_path / "none", captions=["a red ball", "a ball on grass"])
    cfg = base_config(tiny_sd1, none, tmp_path / "out", max_train_steps=1,
                      data_loader__dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(none)},
                      data_loader__caption_preset=None)
    with pytest.raises(DatasetError, match=r"none of the 4 captions contains the placeholder '<thing>'.*img_0.png"):
        run(cfg)
    # with a preset in front of the original captions, the same data trains
    ok = run({**cfg, "data_loader": {**cfg["data_loader"], "caption_preset": "object", "keep_original_captions": True}})
    assert ok.global_step == 1
    some = make_images(tmp_path / "some", captions=["a <thing> ball", "a ball on grass"])
    cfg["data_loader"]["dataset"]["dataset_dir"] = str(some)
    assert run(cfg).global_step == 1


def test_cli_train_runs_a_yaml_with_overrides(tiny_sd1, image_dir, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_sd1, image_dir, tmp_path / "out")))
    assert main(["train", str(path), "--set", "max_train_steps=2", "--set", "num_vectors=3", "-q"]) == 0
    out = capsys.readouterr().out
    emb = Path(out.split("embedding: ")[1].split()[0])
    assert load_file(emb)["emb_params"].shape == (3, 32)


def test_gpu_only_settings_fall_back_on_a_cpu_with_a_warning(tiny_sd1, image_dir, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run(base_config(tiny_sd1, image_dir, tmp_path / "out", mixed_precision="fp16", xformers=True,
                             weight_dtype="bfloat16", max_train_steps=1))
    assert result.global_step == 1
    assert "xformers needs a CUDA GPU" in caplog.text
    # fp16 runs on a CPU (autocast and a scaler); only bf16 weights under fp16 autocast do not
    assert "weight_dtype bfloat16 under mixed_precision fp16 does not run on a CPU" in caplog.text
    assert "mixed_precision fp16 on the CPU: float16 autocast with a gradient scaler" in caplog.text


def test_validate_every_n_epochs_and_cpu_offload_flag(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=None, max_train_epochs=2,
                      validate_every_n_epochs=1, validation_prompts=["a <thing>"], num_validation_images_per_prompt=1,
                      num_validation_inference_steps=2, enable_cpu_offload_during_validation=True,
                      cache_vae_outputs=True)
    result = run(cfg)
    assert [d.name for d in result.validation_dirs] == ["epoch_0001", "final"]
    assert (result.validation_dirs[0] / "grid.png").is_file()


def test_bf16_mixed_precision_on_cpu(tiny_sd1, image_dir, tmp_path):
    result = run(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, mixed_precision="bf16"))
    assert torch.isfinite(_vectors(result)).all()


def test_worker_count_does_not_change_the_result(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3, data_loader__dataloader_num_workers=2,
                      data_loader__random_flip=True, data_loader__center_crop=False)
    with_workers = _vectors(run(cfg))
    cfg["data_loader"]["dataloader_num_workers"] = 0
    assert torch.equal(with_workers, _vectors(run(cfg)))


@pytest.mark.parametrize("fmt, ext, precision", [("a1111", "pt", "float32"), ("kohya", "safetensors", "float16"),
                                                 ("diffusers", "bin", "bfloat16")])
def test_training_writes_the_chosen_format(tiny_sd1, image_dir, tmp_path, fmt, ext, precision):
    from tiforge.embeddings.files import load_embedding

    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, save_every_n_steps=1,
                      save_format=fmt, save_model_as=ext, save_precision=precision,
                      install_embeddings_root=str(tmp_path / "invokeai"))
    result = run(cfg)
    assert result.embedding_path.name == f"thing.{ext}"
    emb = load_embedding(result.embedding_path)
    assert emb.format == fmt and emb.single.dtype == getattr(torch, precision) and emb.single.shape == (2, 32)
    if fmt == "a1111":
        assert emb.step == 2 and emb.token == "<thing>"
    ckpt = result.run_dir / "checkpoints" / "checkpoint-step_00000001" / f"thing.{ext}"
    assert load_embedding(ckpt).format == fmt
    installed = tmp_path / "invokeai" / "embeddings" / "thing" / "learned_embeds.bin"
    assert torch.equal(load_embedding(installed).single, emb.single)


def test_a1111_in_safetensors_is_refused_up_front(tiny_sd1, image_dir, tmp_path):
    with pytest.raises(ConfigError, match="cannot be stored in safetensors"):
        run(base_config(tiny_sd1, image_dir, tmp_path, save_format="a1111"))
