"""kohya-ss sd-scripts' run-management and data options: regularization pictures, saving and resuming
state folders, sample pictures from a prompt file, --vae, and the flags accepted for what they mean."""

import importlib.util
import shlex

import pytest
import torch
import yaml

from tiforge.frontends.cli import main

from conftest import base_config, make_images

QUICK = "--resolution=32 --train_batch_size=1 --report_to=none --learning_rate=1e-3 --seed=1"


def kohya_line(model, data, out, extra="") -> list[str]:
    return shlex.split(f"--pretrained_model_name_or_path={model} --train_data_dir={data} --output_dir={out} "
                       f"--output_name=mychar --save_model_as=safetensors --token_string=mychar4 --init_word=cute "
                       f"--caption_extension=.txt {QUICK} {extra}")


# ------------------------------------------------------------------------------- regularization


def test_kohya_balances_regularization_pictures_against_the_training_pictures():
    from pathlib import Path

    from tiforge.data.regularization import balance_regularization
    from tiforge.data.sources import Record

    def recs(n, repeats, reg):
        return [Record(Path(f"{'r' if reg else 't'}{i}.png"), "c", repeats=repeats, is_reg=reg) for i in range(n)]

    # 2 training pictures x 10 repeats = 20 per epoch; 3 reg pictures x 1 repeat grow one repeat in turn to 20
    out = balance_regularization(recs(2, 10, False) + recs(3, 1, True))
    assert [r.repeats for r in out if r.is_reg] == [7, 7, 6]
    # more reg pictures than needed: kohya takes them in order until the count is reached
    out = balance_regularization(recs(1, 3, False) + recs(5, 1, True))
    assert [r.name for r in out if r.is_reg] == ["r0.png", "r1.png", "r2.png"]
    assert sum(r.repeats for r in out if not r.is_reg) == 3


def test_reg_data_dir_pictures_keep_their_class_captions_and_weigh_prior_loss_weight(tiny_sd1, tmp_path, capsys,
                                                                                   caplog):
    from tiforge.data.captions import Captioner
    from tiforge.data.regularization import loss_weights
    from tiforge.data.sources import find_records
    from tiforge.config.loading import config_from_dict
    from tiforge.model.placeholders import Placeholder

    data = make_images(tmp_path / "train" / "5_mychar4", n=2, captions=["mychar4 smiling"])
    make_images(tmp_path / "reg" / "1_woman", n=3)  # no caption files: the folder's class words caption them
    line = shlex.split(f"--pretrained_model_name_or_path={tiny_sd1} --train_data_dir={data.parent} "
                       f"--reg_data_dir={tmp_path / 'reg'} --prior_loss_weight=0.5 --output_dir={tmp_path / 'out'} "
                       f"--token_string=mychar4 --init_word=cute --caption_extension=.txt {QUICK} --max_train_steps=2")
    assert main(["train", *line, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data_loader"]["reg_data_dir"] == str(tmp_path / "reg") and cfg["prior_loss_weight"] == 0.5
    config = config_from_dict(cfg)
    records = find_records(config.data_loader)
    reg = [r for r in records if r.is_reg]
    assert [r.caption for r in reg] == ["woman"] * 3 and sum(r.repeats for r in reg) == 10  # balanced to 2 x 5
    ph = Placeholder("mychar4", ("mychar4",), (49408,))
    assert Captioner(config.data_loader, ph)(reg[0].caption, torch.Generator().manual_seed(0), reg[0]) == "woman"
    assert loss_weights({"is_reg": torch.tensor([True, False])}, 0.5).tolist() == [0.5, 1.0]

    caplog.set_level("INFO", logger="tiforge")
    assert main(["train", *line, "-q"]) == 0
    assert "regularization: 3 of 3 picture(s), 10 per epoch with repeats (balanced to the 10 training" in caplog.text
    assert "They carry no placeholder, so they send no gradient into the embedding" in caplog.text
    assert "weighted by prior_loss_weight=0.5;" in caplog.text

    # kohya's templates replace every caption, the regularization pictures' too: then they train the placeholder
    caplog.clear()
    capsys.readouterr()
    assert main(["train", *line, "--use_object_template", "--print-config"]) == 0
    templated = config_from_dict(yaml.safe_load(capsys.readouterr().out))
    reg = [r for r in find_records(templated.data_loader) if r.is_reg]
    assert "mychar4" in Captioner(templated.data_loader, ph)(reg[0].caption, torch.Generator().manual_seed(0), reg[0])
    assert "so they train the placeholder too" in caplog.text


def test_prior_loss_weight_scales_the_reg_samples_loss():
    from diffusers import DDPMScheduler

    from tiforge.model.loss import denoising_loss

    sched = DDPMScheduler(num_train_timesteps=10)
    latents, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    unet = lambda x, t, h, return_dict=False: (x * 0,)  # noqa: E731 - predicts zeros: the error is the noise
    kw = dict(prediction_type="epsilon", min_snr_gamma=None, noise=noise, timesteps=torch.tensor([3, 3]))
    full = denoising_loss(unet, sched, latents, None, **kw)
    halved = denoising_loss(unet, sched, latents, None, reg_weights=torch.tensor([1.0, 0.5]), **kw)
    per_sample = noise.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(full, per_sample.mean()) and torch.allclose(halved, (per_sample[0] + 0.5 * per_sample[1]) / 2)


def test_is_reg_subsets_of_a_dataset_toml(tmp_path):
    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
    from tiforge.data.sources import find_records

    train = make_images(tmp_path / "train", n=2, captions=["mychar4"])
    reg = make_images(tmp_path / "reg", n=2)
    toml = tmp_path / "d.toml"
    toml.write_text(f"[[datasets]]\nresolution = 32\n  [[datasets.subsets]]\n  image_dir = '{train}'\n"
                    f"  caption_extension = '.txt'\n  num_repeats = 2\n  [[datasets.subsets]]\n  image_dir = '{reg}'\n"
                    "  is_reg = true\n  class_tokens = 'woman'\n")
    dl = TextualInversionSDDataLoaderConfig(dataset={"type": "KOHYA_DATASET_CONFIG", "config_path": str(toml)})
    records = find_records(dl)
    assert [(r.is_reg, r.caption, r.repeats) for r in records] == [
        (False, "mychar4", 2), (False, "mychar4", 2), (True, "woman", 2), (True, "woman", 2)]


# ------------------------------------------------------------------------------ saves and state


def test_save_state_retention_state_on_train_end_and_resume(tiny_sd1, tmp_path, capsys):
    data = make_images(tmp_path / "img", n=2, captions=["mychar4 smiling"])
    out = tmp_path / "out"
    line = kohya_line(tiny_sd1, data, out, "--max_train_steps=5 --save_every_n_steps=1 --save_state "
                                          "--save_last_n_steps=2 --save_last_n_steps_state=1")
    assert main(["train", *line, "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    # steps 1..4 saved (the 5th is the final embedding); at step 4 kohya keeps the saves of steps 4-2.. for the
    # embeddings and 4-1.. for the states; and the end state, which kohya writes with --save_state alone
    assert [n for n in names if n.startswith("mychar-step") and n.endswith(".safetensors")] == [
        "mychar-step00000002.safetensors", "mychar-step00000003.safetensors", "mychar-step00000004.safetensors"]
    assert [n for n in names if n.endswith("-state")] == [
        "mychar-state", "mychar-step00000003-state", "mychar-step00000004-state"]
    # kohya's --resume with a state folder continues from its step
    state = out / "mychar-step00000004-state"
    assert main(["train", *line, f"--resume={state}", "--max_train_steps=6", "--save_every_n_steps=9", "-q"]) == 0
    assert f"resuming from {state} (step 4)" in (out / "train.log").read_text()

    # without --save_state kohya writes the embeddings only (with --save_state_on_train_end: the end state too)
    plain = tmp_path / "plain"
    assert main(["train", *kohya_line(tiny_sd1, data, plain, "--max_train_steps=2 --save_every_n_steps=1 "
                                                             "--save_state_on_train_end"), "-q"]) == 0
    assert (plain / "mychar-step00000001.safetensors").is_file()
    assert [p.name for p in plain.iterdir() if p.name.endswith("-state")] == ["mychar-state"]


def test_save_last_n_epochs_keeps_the_last_epoch_saves(tmp_path):
    from types import SimpleNamespace

    from tiforge.training.output_layout import OutputPlan
    from tiforge.training.retention import prune_old_saves

    plan = OutputPlan("kohya", tmp_path, "m", "safetensors")
    for e in (1, 2, 3, 4):
        plan.snapshot("epoch", e).write_text("x")
        plan.checkpoint_dir("epoch", e).mkdir()
    config = SimpleNamespace(save_every_n_epochs=1, save_last_n_epochs=2, save_last_n_epochs_state=3)
    prune_old_saves(plan, config, "epoch", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-000002-state", "m-000003-state", "m-000003.safetensors", "m-000004-state", "m-000004.safetensors"]


# ------------------------------------------------------------------------------ sample pictures


def test_sample_prompt_files_in_kohyas_three_forms(tmp_path):
    from tiforge.training.sample_prompts import read_sample_prompts

    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\n\nmychar4 at the beach --n blurry, lowres --w 64 --h 100 --s 3 --l 5.5 --d 7\n"
                   "mychar4 in a forest --ss k_euler_a --g 3.5\n")
    a, b = read_sample_prompts(txt)
    assert (a.prompt, a.negative, a.width, a.height, a.steps, a.scale, a.seed) == (
        "mychar4 at the beach", "blurry, lowres", 64, 96, 3, 5.5, 7)
    assert (b.index, b.sampler, b.width, b.steps, b.scale, b.seed) == (1, "euler_a", 512, 30, 7.5, None)
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 64\nsample_steps = 2\n[[prompt.subset]]\nprompt = "one"\n'
                    '[[prompt.subset]]\nprompt = "two"\nwidth = 128\n')
    assert [(p.prompt, p.width, p.steps) for p in read_sample_prompts(toml)] == [("one", 64, 2), ("two", 128, 2)]
    js = tmp_path / "p.json"
    js.write_text('["three --d 5", {"prompt": "four", "seed": 6}]')
    assert [(p.prompt, p.seed) for p in read_sample_prompts(js)] == [("three", 5), ("four", 6)]


def test_a_bad_prompt_line_is_named_before_training(tiny_sd1, image_dir, tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_text("fine prompt --w 64\nbroken prompt --w wide\n")
    line = kohya_line(tiny_sd1, image_dir, tmp_path / "out", f"--sample_prompts={bad} --sample_every_n_steps=1")
    assert main(["train", *line, "--print-config"]) == 2
    assert f"sample_prompts: {bad}:2: --w wide: expected a whole number" in capsys.readouterr().err
    bad.write_text("prompt --x 3\n")
    assert main(["train", *line, "--print-config"]) == 2
    assert f"{bad}:1: unknown option --x" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    ("--d -5", ":2: --d -5: expected a whole number of 0 or more"),
    ("--s 0", ":2: steps (--s / sample_steps) 0: expected 1 or more"),
    ("--l nan", ":2: scale (--l / scale) nan: expected a finite number"),
    ("--l inf", ":2: scale (--l / scale) inf: expected a finite number"),
])
def test_prompt_values_no_picture_can_be_made_with_are_refused_with_the_line(tmp_path, option, message):
    from tiforge.training.sample_prompts import SamplePromptError, read_sample_prompts

    path = tmp_path / "p.txt"
    path.write_text(f"fine --s 2\nmychar4 {option}\n")
    with pytest.raises(SamplePromptError) as err:
        read_sample_prompts(path)
    assert f"{path}{message}" in str(err.value)


def test_every_kohya_sampler_is_a_diffusers_scheduler(tiny_sd1):
    from diffusers import DDPMScheduler

    from tiforge.training.sample_prompts import (SAMPLER_ALIASES, SAMPLERS, SamplePromptError,
                                                 check_sampler_available, make_scheduler)

    base = DDPMScheduler.from_pretrained(tiny_sd1, subfolder="scheduler").config
    have_scipy = importlib.util.find_spec("scipy") is not None
    for name in [*SAMPLERS, *SAMPLER_ALIASES]:
        if SAMPLER_ALIASES.get(name, name) == "lms" and not have_scipy:
            with pytest.raises(SamplePromptError, match="needs scipy"):
                check_sampler_available(name)
            continue
        scheduler = make_scheduler(name, base)
        assert type(scheduler).__name__ == SAMPLERS[SAMPLER_ALIASES.get(name, name)][0]
    assert make_scheduler("dpmsolver++", base).config.algorithm_type == "dpmsolver++"


def test_sample_pictures_at_first_and_every_n_steps_in_kohyas_layout(tiny_sd1, tmp_path):
    data = make_images(tmp_path / "img", n=2, captions=["mychar4 smiling"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("mychar4 portrait --w 64 --h 72 --s 2 --d 11\nmychar4 --n ugly --s 1 --w 64 --h 64\n")
    out = tmp_path / "out"
    line = kohya_line(tiny_sd1, data, out, f"--max_train_steps=2 --sample_prompts={prompts} --sample_every_n_steps=2 "
                                           "--sample_at_first --sample_sampler=euler_a")
    assert main(["train", *line, "-q"]) == 0
    names = sorted(p.name for p in (out / "sample").iterdir())
    assert len(names) == 4
    assert names[0].startswith("mychar_000000_00_") and names[0].endswith("_11.png")
    assert names[1].startswith("mychar_000000_01_") and names[3].startswith("mychar_000002_01_")
    from PIL import Image

    assert Image.open(out / "sample" / names[0]).size == (64, 72)


def test_a_stop_while_sampling_is_honoured_within_a_sampler_step(tiny_sd1, image_dir, tmp_path, monkeypatch):
    """Ctrl-C / SIGTERM (the recipe's stop_event) during the sample pictures: the picture being made is cut
    short after the step in flight, the others are not started, and the run stops with what it learned."""
    import threading

    from tiforge.config.loading import config_from_dict
    from tiforge.training import sampling
    from tiforge.training.interrupts import TrainingStopped
    from tiforge.training.recipe import train

    stop, sampler_steps = threading.Event(), []
    real_make_scheduler = sampling.make_scheduler

    def counting_scheduler(name, base_config):
        scheduler = real_make_scheduler(name, base_config)
        real_step = scheduler.step

        def step(*args, **kwargs):
            sampler_steps.append(1)
            if len(sampler_steps) == 2:
                stop.set()  # as the signal handler would, in the middle of the first picture
            return real_step(*args, **kwargs)
        scheduler.step = step
        return scheduler
    monkeypatch.setattr(sampling, "make_scheduler", counting_scheduler)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a toy --w 64 --h 64 --s 20\nanother toy --w 64 --h 64 --s 20\n")
    config = config_from_dict(base_config(tiny_sd1, image_dir, tmp_path / "out", sample_prompts=str(prompts),
                                          sample_at_first=True))
    with pytest.raises(TrainingStopped):
        train(config, progress=False, stop_event=stop)
    assert len(sampler_steps) == 2  # not the 40 steps of both pictures
    assert not list((tmp_path / "out").glob("*/sample/*.png"))  # the cut-short picture is not written
    assert list((tmp_path / "out").glob("*/checkpoints/checkpoint-step_00000000"))  # stopped before a training step


def test_sampling_every_n_epochs_says_that_every_n_steps_is_ignored(tmp_path, caplog):
    from types import SimpleNamespace

    from tiforge.training.sampling import SamplePictures

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("mychar4 portrait\n")
    caplog.set_level("INFO", logger="tiforge")
    both = SimpleNamespace(sample_prompts=str(prompts), sample_every_n_epochs=2, sample_every_n_steps=5,
                           sample_at_first=False)
    samples = SamplePictures(both, tmp_path, 0)
    assert "sample_every_n_steps=5 is ignored" in caplog.text
    assert not samples.at_step(5) and samples.at_epoch(2)


# ------------------------------------------------------------------------------- other flags


def test_vae_lowram_and_persistent_workers_are_accepted(tiny_sd1, image_dir, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="tiforge")
    line = kohya_line(tiny_sd1, image_dir, tmp_path / "out", f"--vae={tiny_sd1 / 'vae'} --lowram "
                                                             "--persistent_data_loader_workers")
    assert main(["train", *line, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["vae_model"] == str(tiny_sd1 / "vae")
    assert "--lowram: tiforge loads the frozen model once" in caplog.text
    assert "--persistent_data_loader_workers: tiforge's data-loader workers always live" in caplog.text


def test_vae_model_replaces_the_vae_of_an_sd_model(tiny_sd1, tmp_path, caplog):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tiforge.model.loading import load_sd_components

    other = AutoencoderKL.from_pretrained(tiny_sd1, subfolder="vae")
    with torch.no_grad():
        other.decoder.conv_out.bias.fill_(0.25)
    other.save_pretrained(tmp_path / "vae-folder")
    save_file(other.state_dict(), tmp_path / "vae.safetensors")
    # the original (LDM) key names, as in vae-ft-mse-840000-ema-pruned.safetensors or a whole checkpoint
    save_file({k: v.contiguous() for k, v in _ldm_vae_keys(other.state_dict(), 2).items()}, tmp_path / "ldm.safetensors")
    for source in ("vae-folder", "vae.safetensors", "ldm.safetensors"):  # a folder, or kohya's single file
        with caplog.at_level("INFO", logger="tiforge"):
            parts = load_sd_components(str(tiny_sd1), None, vae_model=str(tmp_path / source), progress=False)
        assert not parts.is_sdxl, source
        assert f"using the VAE from {tmp_path / source} (vae_model)" in caplog.text
        for name, value in other.state_dict().items():
            assert torch.equal(parts.vae.state_dict()[name], value), (source, name)


def _ldm_vae_keys(state: dict, levels: int) -> dict:
    """diffusers' VAE key names -> the original Stable Diffusion checkpoint's (a test fixture)."""
    import re

    out = {}
    for key, value in state.items():
        up = lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}."  # noqa: E731 - the up blocks run backwards
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: up(m) + "block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: up(m) + "upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_norm_out", "norm_out")
        k = k.replace("conv_shortcut", "nin_shortcut").replace("attn_1.group_norm", "attn_1.norm")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"attn_1.{a}.", f"attn_1.{b}.")
        if ".attn_1." in k and k.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # 1x1 convolutions there
        out["first_stage_model." + k] = value
    return out


@pytest.mark.parametrize("typo, suggestion", [
    ("--save_stat", "--save_state"), ("--sample_prompt", "--sample_prompts"), ("--save_last_n_step", "--save_last_n_steps"),
    ("--reg_data", "--reg_data_dir"), ("--presistent_data_loader_workers", "--persistent_data_loader_workers"),
])
def test_near_misses_of_kohya_names_suggest_the_right_flag(typo, suggestion):
    from tiforge.config.flags import flags_to_overrides
    from tiforge.config.schema import ConfigError

    with pytest.raises(ConfigError, match=f"did you mean {suggestion}\\?"):
        flags_to_overrides([typo])


@pytest.mark.parametrize("flag", ["--highvram", "--vae_batch_size=4", "--save_n_epoch_ratio=5", "--caption_prefix=x"])
def test_kohyas_unsupported_flags_are_named_as_kohyas_not_misread_as_a_lookalike(flag):
    from tiforge.config.flags import flags_to_overrides
    from tiforge.config.schema import ConfigError

    with pytest.raises(ConfigError) as err:
        flags_to_overrides([flag])
    assert "a flag of kohya-ss sd-scripts" in str(err.value) and "did you mean" not in str(err.value)


def test_kohyas_old_spelling_caption_extention():
    from tiforge.config.flags import flags_to_overrides

    assert flags_to_overrides(["--caption_extention=.txt"])["data_loader.dataset.caption_extension"] == ".txt"


def test_resume_with_a_kohya_output_folder_lists_its_state_folders(tmp_path):
    import json

    from tiforge.training.checkpoints import POSITION_FILE, STATE_FILE, CheckpointError, find_checkpoint

    out = tmp_path / "out"
    for step, name in ((2, "mychar-000001-state"), (4, "mychar-000002-state")):
        (out / name).mkdir(parents=True)
        (out / name / STATE_FILE).write_bytes(b"")
        (out / name / POSITION_FILE).write_text(json.dumps({"global_step": step}))
    (out / "mychar.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        find_checkpoint(str(out), tmp_path / "elsewhere")
    message = str(err.value)
    assert "not a checkpoint" in message
    assert message.index(str(out / "mychar-000002-state")) < message.index(str(out / "mychar-000001-state"))


def test_buckets_no_picture_fits_are_refused_naming_the_dataset_toml(tiny_sd1, image_dir, tmp_path, capsys):
    from conftest import write_kohya_dataset_toml

    toml = write_kohya_dataset_toml(tmp_path / "ds.toml", image_dir, "mychar4")
    toml.write_text(toml.read_text().replace("enable_bucket = false", "enable_bucket = true"))  # 32 px < 64 steps
    code = main(["train", f"--pretrained_model_name_or_path={tiny_sd1}", f"--dataset_config={toml}",
                 f"--output_dir={tmp_path / 'out'}", "--token_string=mychar4", "--init_word=cute", "--max_train_steps=1"])
    assert code == 2
    assert f"{toml}: enable_bucket with resolution 32x32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
