"""The command lines users bring from the other tools (seeds 001-003) run in tiforge."""

import shlex

import pytest
import yaml
from safetensors.torch import load_file

from diffusers import StableDiffusionPipeline

from tiforge.frontends.cli import main
from tiforge.embeddings.compatibility import invokeai_token_width

from conftest import base_config, make_images, write_kohya_dataset_toml

# Seed 003, the diffusers guide, with MODEL_NAME / DATA_DIR filled in.
DIFFUSERS = """--pretrained_model_name_or_path={model} --train_data_dir={data} --learnable_property="object"
  --placeholder_token="<cat-toy>" --initializer_token="toy" --resolution=512 --train_batch_size=1
  --gradient_accumulation_steps=4 --max_train_steps=3000 --learning_rate=5.0e-04 --scale_lr
  --lr_scheduler="constant" --lr_warmup_steps=0 --output_dir="{out}" --push_to_hub"""
DIFFUSERS_EXTRA = """--num_vectors=5 --validation_prompt="A <cat-toy> backpack" --num_validation_images=4
  --validation_steps=100 --checkpointing_steps=500"""
# Seed 002, InvokeAI's invokeai-ti (the guide's placeholder lost its angle brackets in rendering).
INVOKEAI = """--model={model} --resolution=512 --learnable_property=style --initializer_token='*'
  --placeholder_token='<psychedelic>' --train_data_dir={data} --output_dir={out} --scale_lr --train_batch_size=8
  --gradient_accumulation_steps=4 --max_train_steps=3000 --learning_rate=0.0005 --resume_from_checkpoint=latest
  --lr_scheduler=constant --mixed_precision=fp16 --only_save_embeds"""
# Seed 001, kohya-ss, exactly as written (DreamBooth method: a dataset .toml).
KOHYA_SEED = """--dataset_config={toml} --output_dir={out} --output_name=mychar --save_model_as=safetensors
  --prior_loss_weight=1.0 --max_train_steps=1600 --learning_rate=1e-6 --optimizer_type="AdamW8bit" --xformers
  --mixed_precision="fp16" --cache_latents --gradient_checkpointing --token_string=mychar4 --init_word=cute
  --num_vectors_per_token=4 --pretrained_model_name_or_path={model}"""
# Seed 001 with --train_data_dir in place of the dataset .toml.
KOHYA = """--train_data_dir={data} --caption_extension=.txt --pretrained_model_name_or_path={model} --output_dir={out}
  --output_name=mychar --save_model_as=safetensors --prior_loss_weight=1.0 --max_train_steps=1600 --learning_rate=1e-6
  --optimizer_type="AdamW8bit" --xformers --mixed_precision="fp16" --cache_latents --gradient_checkpointing
  --token_string=mychar4 --init_word=cute --num_vectors_per_token=4"""
# What the tests add so that a run takes seconds on a CPU: later flags win.
QUICK = "--max_train_steps=2 --resolution=32 --train_batch_size=1 --gradient_accumulation_steps=1 --report_to=none"


def resolved(argv, capsys) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def args(template: str, **kw) -> list[str]:
    return shlex.split(template.format(**kw))


def test_diffusers_command_line(tiny_sd1, image_dir, tmp_path, capsys):
    line = args(DIFFUSERS, model=tiny_sd1, data=image_dir, out=tmp_path / "cat")
    cfg = resolved(line, capsys)
    assert cfg["model"] == str(tiny_sd1) and cfg["placeholder_token"] == "<cat-toy>"
    assert cfg["data_loader"]["dataset"] == {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(image_dir),
                                             "keep_in_memory": False}
    assert cfg["data_loader"]["caption_preset"] == "object" and cfg["data_loader"]["resolution"] == 512
    assert cfg["optimizer"]["learning_rate"] == 5e-4 and cfg["scale_lr"] is True
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["max_train_steps"] == 3000 and cfg["push_to_hub"] is True
    extra = resolved(line + args(DIFFUSERS_EXTRA), capsys)
    assert extra["num_vectors"] == 5 and extra["validation_prompts"] == ["A <cat-toy> backpack"]
    assert extra["num_validation_images_per_prompt"] == 4 and extra["validate_every_n_steps"] == 100
    assert extra["save_every_n_steps"] == 500

    # Runs as written (made short); the hub is unreachable here, so the upload fails after training, clearly.
    code = main(["train", *line, *args(DIFFUSERS_EXTRA), *shlex.split(QUICK), "--num_validation_images=1",
                 "--num_validation_inference_steps=2", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "training finished, but the upload to the hub repo 'cat' failed" in err
    out = tmp_path / "cat"  # where the diffusers example writes, so the guide's next line works
    assert load_file(out / "learned_embeds.safetensors")["<cat-toy>"].shape == (5, 32)
    assert (out / "token_identifier.txt").read_text().strip() == "<cat-toy>"
    assert (out / "type_of_concept.txt").read_text().strip() == "object"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    pipe.load_textual_inversion(str(out))
    assert "<cat-toy>_4" in pipe.tokenizer.get_vocab()
    assert main(["train", *line, *shlex.split(QUICK), "--push_to_hub=false", "-q"]) == 0


def test_diffusers_checkpoints_snapshots_and_resume_by_name(tiny_sd1, image_dir, tmp_path, capsys):
    line = args(DIFFUSERS, model=tiny_sd1, data=image_dir, out=tmp_path / "cat") + shlex.split(QUICK) + [
        "--push_to_hub=false", "--max_train_steps=4", "--checkpointing_steps=1", "--checkpoints_total_limit=2",
        "--save_steps=2", "--no_safe_serialization", "-q"]
    assert main(["train", *line]) == 0
    out = tmp_path / "cat"
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("checkpoint-")] == ["checkpoint-2", "checkpoint-3"]
    assert {"learned_embeds.bin", "learned_embeds-steps-2.bin", "learned_embeds-steps-4.bin"} <= set(names)
    # the guide's spelling: a checkpoint's name in output_dir
    assert main(["train", *line, "--resume_from_checkpoint=checkpoint-3", "--max_train_steps=5"]) == 0
    assert "resuming from " + str(out / "checkpoint-3") in (out / "train.log").read_text()


def test_invokeai_command_line(tiny_sd1, image_dir, tmp_path, capsys, monkeypatch):
    line = args(INVOKEAI, model=tiny_sd1, data=image_dir, out=tmp_path / "psychedelic")
    cfg = resolved(line, capsys)
    assert cfg["data_loader"]["caption_preset"] == "style" and cfg["initializer_token"] == "*"
    assert cfg["resume_from_checkpoint"] == "latest" and cfg["mixed_precision"] == "fp16"
    assert cfg["weight_dtype"] == "float16"  # invokeai-ti casts the frozen weights to the mixed precision
    root = tmp_path / "invokeai"
    root.mkdir()
    monkeypatch.setenv("INVOKEAI_ROOT", str(root))  # invokeai-ti installs into the InvokeAI root it finds
    assert main(["train", *line, *shlex.split(QUICK), "--save_every_n_steps=1", "-q"]) == 0
    out = tmp_path / "psychedelic"
    assert (out / "learned_embeds.bin").is_file() and (out / "checkpoint-1").is_dir()
    # run again: --resume_from_checkpoint=latest now finds the checkpoint and continues there
    assert main(["train", *line, *shlex.split(QUICK), "--max_train_steps=3", "-q"]) == 0
    assert "resuming from " + str(out / "checkpoint-1") in (out / "train.log").read_text()
    installed = root / "embeddings" / "psychedelic" / "learned_embeds.bin"
    assert invokeai_token_width(installed) == 32  # the probe measures the tiny model's width on the right axis


def test_kohya_command_line(tiny_sd1, tmp_path, capsys):
    data = make_images(tmp_path / "img", captions=["mychar4 1girl", "mychar4 smiling"])
    line = args(KOHYA, model=tiny_sd1, data=data, out=tmp_path / "out")
    cfg = resolved(line, capsys)
    assert cfg["placeholder_token"] == "mychar4" and cfg["initializer_token"] == "cute" and cfg["num_vectors"] == 4
    assert cfg["optimizer"]["optimizer_type"] == "AdamW8bit" and cfg["cache_vae_outputs"] is True
    assert cfg["mixed_precision"] == "fp16" and cfg["weight_dtype"] == "float16"  # as kohya casts the weights
    assert cfg["data_loader"]["dataset"]["type"] == "IMAGE_CAPTION_DIR_DATASET"
    # kohya writes a state folder beside each saved embedding only with --save_state
    assert main(["train", *line, *shlex.split(QUICK), "--save_every_n_steps=1", "--save_state", "-q"]) == 0
    run = tmp_path / "out"  # kohya's names and layout, in output_dir itself
    assert load_file(run / "mychar.safetensors")["emb_params"].shape == (4, 32)
    assert (run / "mychar-step00000001.safetensors").is_file() and (run / "mychar-step00000001-state").is_dir()
    log = (run / "train.log").read_text() + capsys.readouterr().err
    assert "AdamW8bit needs bitsandbytes and a CUDA GPU" in log or "bitsandbytes" in log


def test_kohya_seed_command_with_a_dataset_toml(tiny_sd1, tmp_path, capsys):
    # the DreamBooth-method layout: class tokens caption the images; batch size and resolution in the file
    data = make_images(tmp_path / "train" / "10_mychar4 1girl", n=3)
    toml = write_kohya_dataset_toml(tmp_path / "dataset.toml", data, "mychar4 1girl", num_repeats=10)
    line = args(KOHYA_SEED, toml=toml, model=tiny_sd1, out=tmp_path / "out")
    cfg = resolved(line, capsys)
    assert cfg["data_loader"]["dataset"] == {"type": "KOHYA_DATASET_CONFIG", "config_path": str(toml)}

    # --debug_dataset shows the ids, the placeholder's from 49408 up, and stops
    assert main(["train", *line, "--debug_dataset"]) == 0
    out = capsys.readouterr().out
    assert "'mychar4 mychar4_1 mychar4_2 mychar4_3 1girl'" in out
    assert "[49408] [49409] [49410] [49411]" in out and "30 items per epoch" in out
    assert "x10" in out and "30 batches, 30 optimizer steps per epoch" in out

    assert main(["train", *line, "--max_train_steps=2", "--report_to=none", "-q"]) == 0
    run = tmp_path / "out"
    assert load_file(run / "mychar.safetensors")["emb_params"].shape == (4, 32)
    # kohya's way of loading it: --weights, back into a kohya command line
    assert main(["train", *line, "--max_train_steps=1", "--report_to=none", "-q", "--output_name=again",
                 f"--weights={run / 'mychar.safetensors'}"]) == 0
    assert load_file(run / "again.safetensors")["emb_params"].shape == (4, 32)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train_batch_size"] == 1 and saved["data_loader"]["resolution"] == 32


def test_kohya_weights_continue_an_embedding(tiny_sd1, image_dir, tmp_path, capsys):
    from tiforge.embeddings.files import save_embedding
    import torch

    start = save_embedding(tmp_path / "start.pt", "x", torch.randn(3, 32), format="a1111")
    cfg = resolved(["--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
                    "--use_object_template", "--token_string", "mytok", "--init_word", "cute", "--weights",
                    str(start), "--output_dir", str(tmp_path), "--max_train_steps", "1"], capsys)
    assert cfg["initial_embedding_file"] == str(start) and cfg["initializer_token"] is None


@pytest.mark.parametrize("flag, message", [
    ("--logging_dir=logs", "--logging_dir: not supported: logs always go to <run folder>/logs"),
    ("--gui", "--gui: not supported: the console front end is `tiforge ui`"),
    ("--max_train_step=3", "--max_train_step: unknown flag (did you mean --max_train_steps?)"),
])
def test_flags_that_mean_nothing_are_refused_with_what_to_use(flag, message, tiny_sd1, image_dir, tmp_path, capsys):
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
                 flag, "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_every_config_field_is_a_flag(capsys, tmp_path):
    from tiforge.config.flags import known_flag_names
    from tiforge.config.schema import SdTextualInversionConfig
    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig

    names = set(known_flag_names())
    for model, skip in ((SdTextualInversionConfig, {"type", "data_loader", "optimizer"}),
                        (TextualInversionSDDataLoaderConfig, {"type", "dataset", "aspect_ratio_buckets"})):
        missing = set(model.model_fields) - skip - names
        assert not missing, missing


def test_flags_override_the_yaml(tiny_sd1, image_dir, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"base_output_dir": str(tmp_path), "model": str(tiny_sd1),
                                    "placeholder_token": "<x>", "initializer_token": "toy", "max_train_steps": 5,
                                    "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET",
                                                                "dataset_dir": str(image_dir)},
                                                    "caption_preset": "object"}}))
    cfg = resolved([str(path), "--max_train_steps", "9", "--resolution", "64", "--random_flip"], capsys)
    assert cfg["max_train_steps"] == 9 and cfg["data_loader"]["resolution"] == 64
    assert cfg["data_loader"]["random_flip"] is True


def test_json_lines_progress(tiny_sd1, image_dir, tmp_path, capsys):
    import json

    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
                 "--learnable_property", "object", "--placeholder_token", "<j>", "--initializer_token", "toy",
                 "--output_dir", str(tmp_path), "--max_train_steps", "3", "--resolution", "32", "--json",
                 "--save_every_n_steps", "2", "--validation_prompt", "a <j>", "--num_validation_images", "1",
                 "--num_validation_inference_steps", "1"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 3
    assert all({"loss", "lr", "seconds", "max_steps"} <= set(e) for e in events if e["event"] == "step")
    files = [(e["event"], e["path"].rsplit("/", 1)[-1]) for e in events if "path" in e]
    assert files == [("checkpoint", "checkpoint-2"), ("embedding", "learned_embeds.safetensors"), ("validation", "final")]
    assert "loading model" not in captured.err and "%|" not in captured.err  # no bars in JSON mode


def test_progress_bars_for_loading_caching_training_validation(tiny_sd1, image_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tiforge.frontends.cli.plain_progress_wanted", lambda: False)  # as on a terminal
    assert main(["train", "--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
                 "--learnable_property", "object", "--placeholder_token", "<j>", "--initializer_token", "toy",
                 "--output_dir", str(tmp_path), "--max_train_steps", "2", "--resolution", "32", "--cache_latents",
                 "--validation_prompt", "a <j>", "--num_validation_images", "1", "--num_validation_inference_steps", "1",
                 "--save_every_n_steps", "1", "--save_state"]) == 0
    err = capsys.readouterr().err
    for bar in ("checking data", "loading model", "caching latents", "training", "validation (final)",
                "saving checkpoint step 1"):
        assert bar in err, bar


def test_mixed_precision_flag_casts_the_weights_unless_weight_dtype_is_given(tiny_sd1, image_dir, tmp_path, capsys):
    base = args(DIFFUSERS, model=tiny_sd1, data=image_dir, out=tmp_path / "cat")
    assert resolved(base, capsys)["weight_dtype"] == "float32"
    for flag, weights in (("bf16", "bfloat16"), ("fp16", "float16"), ("no", "float32")):
        cfg = resolved(base + [f"--mixed_precision={flag}"], capsys)
        assert (cfg["mixed_precision"], cfg["weight_dtype"]) == (flag, weights)
    # an explicit weight dtype wins, before or after the flag, on the command line or in the YAML
    for extra in (["--weight_dtype=float32", "--mixed_precision=bf16"], ["--mixed_precision=bf16", "--weight_dtype=float32"]):
        assert resolved(base + extra, capsys)["weight_dtype"] == "float32"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(resolved(base, capsys)))
    assert resolved([str(path), "--mixed_precision=fp16"], capsys)["weight_dtype"] == "float32"
    # in YAML (invoke-training's meaning) the two fields stay apart
    yaml_only = yaml.safe_load(path.read_text())
    yaml_only.pop("weight_dtype")
    path.write_text(yaml.safe_dump({**yaml_only, "mixed_precision": "bf16"}))
    assert resolved([str(path)], capsys)["weight_dtype"] == "float32"
    # YAML 1.1 reads a bare `no` as false: it still means "no"
    path.write_text(path.read_text().replace("mixed_precision: bf16", "mixed_precision: no"))
    assert "mixed_precision: no" in path.read_text()
    assert resolved([str(path)], capsys)["mixed_precision"] == "no"


def test_each_tool_brings_its_own_defaults(tiny_sd1, image_dir, tmp_path, capsys):
    """The same command line trains the same thing: what the tool fixes or defaults applies where the line is silent."""
    common = ["--train_data_dir", str(image_dir), "--placeholder_token=<t>", f"--output_dir={tmp_path / 'o'}"]
    diffusers = resolved(["--pretrained_model_name_or_path", str(tiny_sd1), "--initializer_token=toy", *common], capsys)
    dl = diffusers["data_loader"]
    assert (dl["random_flip"], dl["squash"], dl["repeats"], dl["caption_preset"]) == (True, True, 100, "object")
    assert (diffusers["train_batch_size"], diffusers["optimizer"]["learning_rate"], diffusers["scale_lr"]) == (16, 1e-4, False)
    assert (diffusers["lr_warmup_steps"], diffusers["max_train_steps"], diffusers["save_every_n_steps"]) == (500, 5000, 500)
    assert diffusers["save_embedding_every_n_steps"] == 500 and diffusers["min_snr_gamma"] is None
    # the user's own values win; --center_crop crops instead of squashing, epochs replace the default steps
    mine = resolved(["--pretrained_model_name_or_path", str(tiny_sd1), "--initializer_token=toy", *common,
                     "--center_crop", "--repeats=3", "--train_batch_size=2", "--num_train_epochs=2"], capsys)
    assert (mine["data_loader"]["squash"], mine["data_loader"]["center_crop"], mine["data_loader"]["repeats"]) == (
        False, True, 3)
    assert mine["train_batch_size"] == 2 and mine["max_train_steps"] is None and mine["max_train_epochs"] == 2

    invokeai = resolved(["--model", str(tiny_sd1), *common], capsys)
    assert invokeai["scale_lr"] is True and invokeai["initializer_token"] == "*" and invokeai["train_batch_size"] == 16

    kohya = resolved(["--pretrained_model_name_or_path", str(tiny_sd1), "--token_string=<t>", "--init_word=toy",
                      "--train_data_dir", str(image_dir), f"--output_dir={tmp_path / 'k'}"], capsys)
    assert (kohya["train_batch_size"], kohya["optimizer"]["learning_rate"], kohya["max_train_steps"]) == (1, 2e-6, 1600)
    assert (kohya["max_grad_norm"], kohya["min_snr_gamma"], kohya["save_model_as"], kohya["save_state"]) == (
        1.0, None, "pt", False)
    assert kohya["data_loader"]["dataset"]["caption_extension"] == ".caption"
    assert kohya["data_loader"]["random_flip"] is False and kohya["data_loader"]["repeats"] == 1

    # a YAML config is invoke-training's: flags added to it do not bring another tool's defaults
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny_sd1, image_dir, tmp_path / "y")))
    assert main(["train", str(cfg), f"--output_dir={tmp_path / 'y'}", "--print-config"]) == 0
    from_yaml = yaml.safe_load(capsys.readouterr().out)
    assert from_yaml["train_batch_size"] == 2 and from_yaml["data_loader"]["repeats"] == 1


def test_squash_and_repeats_reach_the_training_data(image_dir):
    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
    from tiforge.data.dataset import TextualInversionDataset
    from tiforge.data.images import load_image
    from tiforge.data.sources import find_records

    dl = TextualInversionSDDataLoaderConfig(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(image_dir)},
                                            caption_preset="object", resolution=32, squash=True, repeats=5)
    records = find_records(dl)
    dataset = TextualInversionDataset(records, dl, captioner=None, tokenizers=[])
    assert len(dataset) == 5 * len(records)
    wide = records[-1]  # 72 x 48: squashed whole, not cropped
    pixels, crop, _ = dataset.image_tensors(len(records) - 1)
    import numpy as np
    from PIL import Image

    expected = np.asarray(load_image(wide.image).resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
    assert (crop.top, crop.left) == (0, 0)
    assert np.allclose(pixels.permute(1, 2, 0).numpy(), expected / 127.5 - 1.0, atol=1e-5)


def test_kohya_defaults_leave_what_the_dataset_toml_sets(tiny_sd1, image_dir, tmp_path, capsys, caplog):
    """kohya's batch size default (1) neither applies nor is named when the dataset .toml gives batch_size."""
    toml = tmp_path / "reg.toml"
    toml.write_text(f"[[datasets]]\nbatch_size = 2\nresolution = 32\n  [[datasets.subsets]]\n  image_dir = '{image_dir}'\n")
    argv = ["--pretrained_model_name_or_path", str(tiny_sd1), "--token_string=<t>", "--init_word=toy",
            f"--dataset_config={toml}", f"--output_dir={tmp_path / 'k'}"]
    caplog.set_level("INFO", logger="tiforge")
    assert main(["train", *argv, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train_batch_size"] == 2
    defaults_line = next(r.getMessage() for r in caplog.records if "the defaults of kohya" in r.getMessage())
    assert "train_batch_size" not in defaults_line and "learning_rate=2e-06" in defaults_line


def test_a_refused_or_misspelt_flags_value_is_not_a_second_problem():
    from tiforge.config.flags import ConfigError, flags_to_overrides

    with pytest.raises(ConfigError) as err:
        flags_to_overrides(["--logging_dir", "logs", "--lerning_rate", "1e-3", "--seed", "1"])
    message = str(err.value)
    assert "--logging_dir: not supported" in message and "--lerning_rate" in message
    assert "unexpected argument" not in message and "1e-3" not in message
