"""Hard-to-break behaviour (issue 16): every failure named, every printed command works, nothing
silently dropped. Each test here failed before the change it covers."""

import errno
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiforge.training.checkpoints import CheckpointError
from tiforge.frontends.cli import main
from tiforge.config.loading import config_from_dict
from tiforge.data.sources import DatasetError
from tiforge.embeddings.files import save_embedding
from tiforge.training.recipe import train
from tiforge.training.events import on_steps

from conftest import base_config, make_images

# Runs the CLI, optionally sending itself SIGTERM after step TIFORGE_TEST_STOP_AT and emitting a
# library-style FutureWarning when training starts (TIFORGE_TEST_WARN).
CLI_WRAPPER = """
import os, signal, sys, warnings
import tiforge.training.recipe as t
original = t.train
def train(config, progress=True, listener=None, **kw):
    from tiforge.training.events import Step
    if os.environ.get("TIFORGE_TEST_WARN"):
        warnings.warn("a library says this will change", FutureWarning)
    stop_at = int(os.environ.get("TIFORGE_TEST_STOP_AT", "0"))
    def hear(event):
        if listener is not None:
            listener(event)
        if isinstance(event, Step) and event.step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
    return original(config, progress, hear, **kw)
t.train = train
from tiforge.frontends.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_config(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_wrapped(tmp_path, args, **env):
    script = tmp_path / "wrapped_cli.py"
    script.write_text(CLI_WRAPPER)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, **env}, cwd=tmp_path)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


# ------------------------------------------------------------ 1. the printed resume command


def test_printed_resume_command_finishes_the_interrupted_run_bit_identically(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", train_batch_size=1, max_train_steps=4)
    path = write_config(tmp_path, cfg)
    # The run is longer than the file says: the printed command must remember the --set values.
    stopped = run_wrapped(tmp_path, ["train", str(path), "--set", "max_train_steps=6", "--save_every_n_steps", "2"],
                          TIFORGE_TEST_STOP_AT="3", TIFORGE_TEST_WARN="1")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    err = stopped.stderr
    # 10. stderr is a pipe here: plain progress lines, no redrawn bars or cursor codes
    assert "training: step 1/6" in err and "\r" not in err and "\x1b[" not in err
    assert "FutureWarning" in err  # without -q library warnings still show
    command = next(line for line in err.splitlines() if "To go on:" in line).split("To go on: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["tiforge", "train"] and "CONFIG" not in argv
    # 5. the stopped run's log says what happened and how to go on
    run_dir = run_dirs(tmp_path / "out")[0]
    log_text = (run_dir / "train.log").read_text()
    assert "Training interrupted." in log_text and command in log_text

    resumed = run_wrapped(tmp_path, [*argv[1:], "-q"], TIFORGE_TEST_WARN="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "FutureWarning" not in resumed.stderr  # -q silences library warnings too

    full_cfg = base_config(tiny_sd1, image_dir, tmp_path / "full", train_batch_size=1, max_train_steps=6,
                           save_every_n_steps=2)
    full = train(config_from_dict(full_cfg), progress=False)
    expected = load_file(full.embedding_path)["emb_params"]
    assert torch.equal(load_file(run_dir / "thing.safetensors")["emb_params"], expected)


def test_resuming_past_the_end_says_nothing_is_left(tiny_sd1, image_dir, tmp_path, caplog):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, save_every_n_steps=1)
    first = train(config_from_dict(cfg), progress=False)
    ckpt = first.run_dir / "checkpoints" / "checkpoint-step_00000001"
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        train(config_from_dict({**cfg, "max_train_steps": 1, "resume_from_checkpoint": str(ckpt)}), progress=False)
    assert "nothing is left to train" in caplog.text


# ------------------------------------------------------------ 2. captions over 77 tokens


def _long_caption_config(tiny_sd1, tmp_path, captions):
    data = make_images(tmp_path / "captioned", captions=captions)
    cfg = base_config(tiny_sd1, data, tmp_path / "out", max_train_steps=1)
    cfg["data_loader"]["dataset"] = {"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(data)}
    cfg["data_loader"]["caption_preset"] = None
    return cfg


def test_caption_whose_placeholder_is_cut_off_is_refused_by_name(tiny_sd1, tmp_path):
    long_tail = " ".join(["red"] * 90)
    cfg = _long_caption_config(tiny_sd1, tmp_path, ["a photo of <thing>", f"a photo {long_tail} <thing>"])
    with pytest.raises(DatasetError, match=r"longer than 77 tokens.*removes the placeholder.*img_1") as err:
        train(config_from_dict(cfg), progress=False)
    assert "img_0" not in str(err.value)
    assert run_dirs(tmp_path / "out") == []  # 5. failed before its first step: no folder left


def test_long_caption_with_the_placeholder_in_front_is_warned_about(tiny_sd1, tmp_path, caplog):
    long_tail = " ".join(["red"] * 90)
    cfg = _long_caption_config(tiny_sd1, tmp_path, ["a photo of <thing>", f"<thing> {long_tail}"])
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        train(config_from_dict(cfg), progress=False)
    assert "longer than 77 tokens" in caplog.text and "img_1" in caplog.text


def test_caption_check_takes_the_window_length():
    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.training.start_checks import check_caption_lengths

    class Dataset:  # what check_caption_lengths reads of a TextualInversionDataset
        records = [type("Record", (), {"caption": "red " * 90 + "<thing>", "name": "a.png"})()]
        record_of = [0]
        seed = 0

        @staticmethod
        def captioner(caption, rng, record):
            return caption

    tokenizer = load_clip_tokenizer()
    tokenizer.add_tokens(["<thing>"])
    ids = [tokenizer.convert_tokens_to_ids("<thing>")]
    with pytest.raises(DatasetError, match="a.png"):
        check_caption_lengths(Dataset, tokenizer, ids)
    check_caption_lengths(Dataset, tokenizer, ids, window=225)  # kohya's longer window keeps it


# ------------------------------------------------------------ 3. tracebacks become messages


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_output_path_that_is_a_file_is_named(tiny_sd1, image_dir, tmp_path, capsys):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out"))
    (tmp_path / "a_file").write_text("mine")
    code, out, err = cli(capsys, "train", str(path), "-q", "--set", f"base_output_dir={tmp_path / 'a_file'}")
    assert code == 2 and "base_output_dir" in err and "a_file" in err and "not a folder" in err
    assert (tmp_path / "a_file").read_text() == "mine"


def test_read_only_output_folder_is_named(tiny_sd1, image_dir, tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "ro"))

    # Tests run as root, for whom chmod does not make a folder read-only: a read-only mount, imitated.
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(tmp_path / "ro")):
            read_only()
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    code, out, err = cli(capsys, "train", str(path), "-q")
    assert code == 2 and "base_output_dir" in err and "Read-only file system" in err


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_model_folder_without_unet_names_the_missing_part(tiny_sd1, image_dir, tmp_path, capsys):
    import shutil

    model = _copy_model(tiny_sd1, tmp_path / "model")
    shutil.rmtree(model / "unet")
    path = write_config(tmp_path, base_config(model, image_dir, tmp_path / "out"))
    code, out, err = cli(capsys, "train", str(path), "-q")
    assert code == 2 and "unet/" in err and str(model) in err
    assert run_dirs(tmp_path / "out") == []  # 5. no folder left by a run that never took a step


def test_model_with_truncated_weights_names_the_file_folder(tiny_sd1, image_dir, tmp_path, capsys):
    model = _copy_model(tiny_sd1, tmp_path / "model")
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    path = write_config(tmp_path, base_config(model, image_dir, tmp_path / "out"))
    code, out, err = cli(capsys, "train", str(path), "-q")
    assert code == 2 and str(model / "unet") in err and "damaged" in err


def test_absurd_learning_rate_is_a_config_error(tiny_sd1, image_dir, tmp_path, capsys):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out"))
    code, out, err = cli(capsys, "train", str(path), "-q", "--set", "optimizer.learning_rate=1e38")
    assert code == 2 and "optimizer.learning_rate" in err


# ------------------------------------------------------------ 4. num_vectors on resume, the run lock


@pytest.fixture
def stopped_run(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, save_every_n_steps=1)
    result = train(config_from_dict(cfg), progress=False)
    return cfg, result.run_dir


def test_resume_refuses_a_changed_num_vectors(stopped_run):
    cfg, run_dir = stopped_run
    resumed = {**cfg, "num_vectors": 3, "max_train_steps": 3, "resume_from_checkpoint": str(run_dir)}
    with pytest.raises(CheckpointError, match="num_vectors: checkpoint has 2, config has 3"):
        train(config_from_dict(resumed), progress=False)


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(stopped_run, tmp_path, capsys):
    cfg, run_dir = stopped_run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tiforge.training.run_guard import RunFolderLock; "
         f"RunFolderLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        path = write_config(tmp_path, {**cfg, "max_train_steps": 3})
        code, out, err = cli(capsys, "train", str(path), "-q", "--set", f"resume_from_checkpoint={run_dir}")
        assert code == 2 and f"in use by process {holder.pid}" in err and str(run_dir) in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, out, err = cli(capsys, "train", str(path), "-q", "--set", f"resume_from_checkpoint={run_dir}")
    assert code == 0, err  # released by the kill


# ------------------------------------------------------------ 5./6. failed runs, --json errors


def test_json_mode_reports_an_error_as_one_event(tiny_sd1, image_dir, tmp_path, capsys):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out"))
    (tmp_path / "a_file").write_text("")
    code, out, err = cli(capsys, "train", str(path), "--json", "--set", f"base_output_dir={tmp_path / 'a_file'}")
    event = json.loads(out.strip().splitlines()[-1])
    assert code == 2 and event["event"] == "error" and event["exit_code"] == 2
    assert "a_file" in event["message"] and "a_file" in err


def test_failure_after_steps_keeps_the_folder_and_logs_the_error(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=4)

    def fail_at_step_2(info):
        if info.step == 2:
            raise RuntimeError("the disk went away")

    with pytest.raises(RuntimeError):
        train(config_from_dict(cfg), progress=False, listener=on_steps(fail_at_step_2))
    run_dir = run_dirs(tmp_path / "out")[0]
    log_text = (run_dir / "train.log").read_text()
    assert "ERROR tiforge: the disk went away" in log_text


# ------------------------------------------------------------ 7./9. warnings that were INFO


def test_masks_wanted_but_none_found_is_one_warning_with_the_count(image_dir, caplog):
    from tiforge.data.sources import find_records
    from tiforge.data.checks import apply_policy, scan_records
    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig

    dl = TextualInversionSDDataLoaderConfig.model_validate(
        {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(image_dir)}, "caption_preset": "object",
         "resolution": 32})
    with caplog.at_level(logging.INFO, logger="tiforge"):
        apply_policy(scan_records(find_records(dl, True), dl.height_width, True), "stop")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "none of the 4 pictures has a mask" in warnings[0].getMessage()


def test_tiny_picture_is_a_warning(tmp_path, caplog):
    from PIL import Image

    from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
    from tiforge.data.sources import find_records
    from tiforge.data.checks import apply_policy, scan_records

    folder = make_images(tmp_path / "imgs", n=2)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "dot.png")
    dl = TextualInversionSDDataLoaderConfig.model_validate(
        {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)}, "caption_preset": "object",
         "resolution": 32})
    with caplog.at_level(logging.INFO, logger="tiforge"):
        apply_policy(scan_records(find_records(dl, False), dl.height_width, False), "stop")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dot.png (1x1)" in warnings[0]


def test_embedding_file_with_more_vectors_than_num_vectors_says_which_wins(tiny_sd1, image_dir, tmp_path, caplog):
    start = tmp_path / "start.safetensors"
    save_embedding(start, "<thing>", torch.randn(3, 32), {})
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1, initializer_token=None,
                      initial_embedding_file=str(start), num_vectors=2)
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        result = train(config_from_dict(cfg), progress=False)
    assert "num_vectors is 2" in caplog.text and "initial_embedding_file" in caplog.text and "wins" in caplog.text
    assert load_file(result.embedding_path)["emb_params"].shape == (3, 32)


# ------------------------------------------------------------ 8. resuming from nothing


def test_resume_from_a_wrong_name_lists_the_checkpoints_there_are(stopped_run, capsys, tmp_path):
    cfg, run_dir = stopped_run
    path = write_config(tmp_path, cfg)
    code, out, err = cli(capsys, "train", str(path), "-q", "--set", "resume_from_checkpoint=checkpoint-step_00000099")
    assert code == 2 and "These exist" in err and str(run_dir / "checkpoints" / "checkpoint-step_00000001") in err


# ------------------------------------------------------------ 11. start-up and help


def _modules_after(argv: list[str], cwd: Path) -> set[str]:
    code = ("import sys\nfrom tiforge.frontends.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules])"
            % (argv,))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    line = next(line for line in done.stdout.splitlines() if line.startswith("LOADED"))
    return set(eval(line[len("LOADED "):]))


def test_light_commands_do_not_import_the_heavy_libraries(tiny_sd1, image_dir, tmp_path):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out"))
    for argv in (["--help"], ["--version"], ["train", "--help"], ["config", "--check", str(path)]):
        assert _modules_after(argv, tmp_path) == set(), argv
    emb = tmp_path / "e.safetensors"
    save_embedding(emb, "<thing>", torch.randn(2, 32), {})
    # safetensors files need no torch (tests/test_fast_start.py); a .pt does; the model libraries stay out.
    for argv in (["inspect", str(emb)], ["convert", str(emb), str(tmp_path / "e.pt"), "--to", "a1111"]):
        assert not _modules_after(argv, tmp_path) & {"diffusers", "transformers", "accelerate"}, argv


def test_every_train_flag_has_one_line_of_help_in_its_group(capsys):
    from tiforge.config.flags import known_flag_names
    from tiforge.config.flag_help import GROUPS, flag_help

    missing = [n for n in known_flag_names() if not flag_help(n)[1]]
    assert missing == []
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for group in GROUPS:
        assert f"\n{group}:\n" in text
    for name in known_flag_names():
        assert sum(line.lstrip().startswith(f"--{name} ") for line in text.splitlines()) == 1, name


# ------------------------------------------------------------ 12. missing fields in the user's spelling


@pytest.mark.parametrize("argv, expected", [
    (["--pretrained_model_name_or_path", "m"], ["--output_dir (base_output_dir) is required",
                                                "--train_data_dir (data_loader) is required"]),
    (["--token_string", "<x>"], ["--pretrained_model_name_or_path (model) is required"]),
    (["--model", ".", "--output_dir", "o"], ["--placeholder_token (placeholder_token) is required"]),
    (["--base_output_dir", "o"], ["--model (model) is required", "--dataset_dir (data_loader) is required"]),
])
def test_missing_fields_are_named_in_the_flag_spelling_used(argv, expected, capsys):
    code, out, err = cli(capsys, "train", "-q", *argv)
    assert code == 2
    for text in expected:
        assert text in err


def test_missing_fields_in_a_yaml_file_are_named_by_field_path(tmp_path, capsys):
    path = write_config(tmp_path, {"type": "SD_TEXTUAL_INVERSION", "base_output_dir": "o", "placeholder_token": "<x>",
                                   "data_loader": {"type": "TEXTUAL_INVERSION_SD_DATA_LOADER",
                                                   "dataset": {"type": "IMAGE_DIR_DATASET"}}})
    code, out, err = cli(capsys, "train", str(path), "-q")
    assert code == 2 and "  - model: Field required" in err and "data_loader.dataset.dataset_dir: Field required" in err


# ------------------------------------------------------------ found by trying it as a new user


def test_data_workers_leave_stop_signals_to_the_training_process(tiny_sd1, image_dir, tmp_path):
    """`timeout` and systemd send SIGTERM to the whole process group: a worker must not die of it."""
    from tiforge.data.dataset import ignore_stop_signals, make_dataloader

    cfg = config_from_dict(base_config(tiny_sd1, image_dir, tmp_path / "out"))
    from tiforge.data.captions import Captioner
    from tiforge.data.dataset import TextualInversionDataset
    from tiforge.data.sources import find_records
    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.model.placeholders import Placeholder

    dl = cfg.data_loader
    dataset = TextualInversionDataset(find_records(dl, False), dl, Captioner(dl, Placeholder("<t>", ("<t>",), (1,))),
                                      [load_clip_tokenizer()], seed=0)
    assert make_dataloader(dataset, 1, num_workers=2).worker_init_fn is ignore_stop_signals
    assert make_dataloader(dataset, 1, num_workers=0).worker_init_fn is None
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        ignore_stop_signals(0)  # what each worker runs first
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_a_wrong_checkpoint_name_lists_the_flat_layouts_checkpoints(tmp_path):
    from tiforge.training.checkpoints import POSITION_FILE, STATE_FILE, find_checkpoint

    for step in (1, 2):
        folder = tmp_path / f"checkpoint-{step}"  # the diffusers layout: checkpoints right in output_dir
        folder.mkdir()
        (folder / STATE_FILE).write_bytes(b"")
        (folder / POSITION_FILE).write_text(json.dumps({"global_step": step, "epoch": 1, "batches_in_epoch": step}))
    with pytest.raises(CheckpointError) as err:
        find_checkpoint("nonsense", tmp_path)
    assert "These exist" in str(err.value) and "checkpoint-2" in str(err.value) and "no checkpoint" not in str(err.value)


def test_quiet_switch_may_come_before_the_config_file(tiny_sd1, image_dir, tmp_path, capsys):
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out"))
    code, out, err = cli(capsys, "train", "-q", str(path), "--print-config")
    assert code == 0 and "placeholder_token" in out


def test_a_failed_flag_run_removes_the_output_folder_it_made_and_keeps_a_users(image_dir, tmp_path, capsys):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    line = [f"--pretrained_model_name_or_path={not_a_model}", f"--train_data_dir={image_dir}",
            "--learnable_property=object", "--placeholder_token=<c>", "--initializer_token=toy", "--resolution=32",
            "--max_train_steps=1", "--report_to=none", "-q"]
    made = tmp_path / "new-out"
    code, _, err = cli(capsys, "train", *line, f"--output_dir={made}")
    assert code == 2 and not made.exists()
    users = tmp_path / "users-out"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "train", *line, f"--output_dir={users}")
    assert code == 2 and (users / "notes.txt").read_text() == "mine"


def test_a_runs_warnings_reach_its_listener_and_the_json_lines(tiny_sd1, image_dir, tmp_path, capsys):
    # use_masks without any mask file is one of the run's warnings
    path = write_config(tmp_path, base_config(tiny_sd1, image_dir, tmp_path / "out", use_masks=True, max_train_steps=1))
    code, out, err = cli(capsys, "train", str(path), "--json")
    assert code == 0
    warnings = [e for e in map(json.loads, out.splitlines()) if e["event"] == "warning"]
    assert any("mask" in e["message"] for e in warnings), warnings
