"""Optimizers by kohya-ss's names (and any module.Class) and learning-rate schedules: each one
moves the vectors, each schedule's rates follow its formula, and bad names or arguments are named
errors before any model loads."""

import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiforge.config.loading import config_from_dict
from tiforge.config.optimizer_schema import KOHYA_OPTIMIZERS
from tiforge.config.flags import flags_to_overrides
from tiforge.config.schema import ConfigError
from tiforge.embeddings.files import load_embedding
from tiforge.frontends.cli import main
from tiforge.model.loading import load_sd_components
from tiforge.training.lr_schedules import build_lr_scheduler
from tiforge.training.optimizers import averaged_weights, build_optimizer, resolve_optimizer, with_averaged_weights
from tiforge.training.recipe import train

from conftest import base_config

LR = 1e-2


def config(**overrides):
    return config_from_dict(base_config("model", "data", "out", **overrides))


def steps_of(cfg, n=3, params=None):
    """Builds cfg's optimizer and schedule on a small parameter and takes n steps of a quadratic loss."""
    p = params if params is not None else torch.nn.Parameter(torch.linspace(-1, 1, 16).reshape(2, 8))
    optimizer = build_optimizer(cfg, [p], cfg.learning_rate)
    schedule = build_lr_scheduler(cfg, optimizer, 10, 1)
    if hasattr(optimizer, "train"):
        optimizer.train()
    start, rates = p.detach().clone(), []
    for _ in range(n):
        ((p - 3) ** 2).sum().backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        rates.append(schedule.get_last_lr()[0])
    return start, p.detach(), optimizer, rates


# ------------------------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name", [*KOHYA_OPTIMIZERS, "RAdam", "torch.optim.Adagrad"])
def test_every_optimizer_name_moves_the_vectors(name, caplog):
    cfg = config(optimizer={"optimizer_type": name.lower() if name in KOHYA_OPTIMIZERS else name})
    assert cfg.optimizer.optimizer_type == name  # kohya's names in any case
    # RAdam's rectification makes no update in its first steps
    start, end, optimizer, _ = steps_of(cfg, n=6 if "RAdam" in name else 3)
    assert not torch.equal(start, end), name
    if "8bit" in name or name.startswith("Paged"):
        if not torch.cuda.is_available():  # the 32-bit equivalent, said in the log
            assert "needs bitsandbytes and a CUDA GPU" in caplog.text and "bitsandbytes" not in type(optimizer).__module__


def test_eight_bit_optimizers_use_bitsandbytes_on_a_cuda_gpu(monkeypatch):
    import types

    from tiforge.training.optimizers import resolve_optimizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(Lion8bit=type("Lion8bit", (), {}), SGD8bit=type("SGD8bit", (), {}))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", fake.optim)
    found = resolve_optimizer(config(optimizer={"optimizer_type": "Lion8bit"}), LR)
    assert found.cls is fake.optim.Lion8bit and not found.notes
    sgd = resolve_optimizer(config(optimizer={"optimizer_type": "SGDNesterov8bit"}), LR)
    assert sgd.cls is fake.optim.SGD8bit and sgd.kwargs == {"momentum": 0.9, "nesterov": True}
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed: the 32-bit twin, and what to install
    found = resolve_optimizer(config(optimizer={"optimizer_type": "AdamW8bit"}), LR)
    assert found.cls is torch.optim.AdamW and "bitsandbytes is not installed (pip install bitsandbytes)" in found.notes[0]


def test_kohya_defaults_per_optimizer():
    assert config(optimizer={"optimizer_type": "DAdaptAdam"}).learning_rate == 1.0  # a multiplier
    _, _, sgd, _ = steps_of(config(optimizer={"optimizer_type": "SGDNesterov"}))
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    _, _, ada, rates = steps_of(config(optimizer={"optimizer_type": "AdaFactor"}))
    assert ada.param_groups[0]["relative_step"]
    assert all(isinstance(r, float) and r > 0 for r in rates) and rates[-1] != 1e-3  # the rate Adafactor chose
    _, _, fixed, _ = steps_of(config(optimizer={"optimizer_type": "AdaFactor", "learning_rate": 1e-3,
                                                "optimizer_args": ["relative_step=False", "scale_parameter=False"]}))
    assert fixed.param_groups[0]["lr"] == 1e-3


def test_optimizer_args_reach_the_class_and_win_over_fields():
    cfg = config(optimizer={"optimizer_type": "AdamW", "weight_decay": 0.5, "optimizer_args": {"weight_decay": 0.25,
                                                                                              "amsgrad": True}})
    _, _, opt, _ = steps_of(cfg)
    assert opt.param_groups[0]["weight_decay"] == 0.25 and opt.param_groups[0]["amsgrad"] is True
    _, _, lion, _ = steps_of(config(optimizer={"optimizer_type": "Lion", "optimizer_args": ["betas=0.95,0.98"]}))
    assert lion.param_groups[0]["betas"] == (0.95, 0.98)


def test_bad_optimizer_names_and_arguments_are_named_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"optimizer.optimizer_type: unknown optimizer 'Lino' \(did you mean Lion\?\)"):
        config(optimizer={"optimizer_type": "Lino"})
    with pytest.raises(ConfigError, match=r"Lion takes no beta \(it takes betas"):
        steps_of(config(optimizer={"optimizer_type": "Lion", "optimizer_args": {"beta": 0.9}}))
    with pytest.raises(ConfigError, match="needs the no_such_pkg package: pip install no_such_pkg"):
        steps_of(config(optimizer={"optimizer_type": "no_such_pkg.Opt"}))
    with pytest.raises(ConfigError, match="torch.optim has no Nope"):
        steps_of(config(optimizer={"optimizer_type": "torch.optim.Nope"}))
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"Prodigy needs the prodigyopt package: pip install prodigyopt "
                                          r"\(or pip install 'tiforge\[optimizers\]'"):
        steps_of(config(optimizer={"optimizer_type": "Prodigy"}))


def test_a_missing_package_stops_the_cli_before_the_model_loads(tiny_sd1, image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)
    loaded = []
    monkeypatch.setattr("tiforge.training.recipe.load_sd_components", lambda *a, **k: loaded.append(1))
    code = main(["train", f"--pretrained_model_name_or_path={tiny_sd1}", f"--train_data_dir={image_dir}",
                 f"--output_dir={tmp_path / 'out'}", "--token_string=<t>", "--init_word=toy", "--max_train_steps=2",
                 "--use_object_template", "--use_lion_optimizer", "-q"])
    assert code == 2 and "Lion needs the lion-pytorch package: pip install lion-pytorch" in capsys.readouterr().err
    assert not loaded and not (tmp_path / "out").exists()


def test_kohya_optimizer_flags():
    out = flags_to_overrides(["--optimizer_type=DAdaptAdam", "--optimizer_args", "decouple=True",
                              "betas=0.9,0.99", "weight_decay=0.01 d_coef=2", "--lr_scheduler_args", "T_max=10",
                              "--lr_scheduler_num_cycles=3", "--lr_scheduler_power=2", "--lr_warmup_steps=5%"])
    assert out["optimizer.optimizer_args"] == {"decouple": True, "betas": (0.9, 0.99), "weight_decay": 0.01,
                                               "d_coef": 2}
    assert out["lr_scheduler_args"] == {"T_max": 10} and out["lr_num_cycles"] == "3" and out["lr_power"] == "2"
    assert flags_to_overrides(["--use_8bit_adam"])["optimizer.optimizer_type"] == "AdamW8bit"
    with pytest.raises(ConfigError, match="--use_lion_optimizer: --optimizer_type is also given"):
        flags_to_overrides(["--optimizer_type=AdamW", "--use_lion_optimizer"])
    with pytest.raises(ConfigError, match=r"--optimizer_args: 'weight_decay' is not key=value"):
        flags_to_overrides(["--optimizer_args", "weight_decay"])
    with pytest.raises(ConfigError, match=r"--optimizer_args: 'betas=\(0.9': '\(0.9' is not a Python literal"):
        flags_to_overrides(["--optimizer_args", "betas=(0.9"])


@pytest.mark.parametrize("name", ["AdamW", "Lion", "Prodigy", "AdaFactor", "AdamWScheduleFree", "DAdaptAdam"])
def test_optimizers_train_the_tiny_model(name, tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3, optimizer={"optimizer_type": name})
    result = train(config_from_dict(cfg), progress=False)
    parts = load_sd_components(str(tiny_sd1))
    toy = parts.tokenizer.encode("toy", add_special_tokens=False)[0]
    initial = parts.text_encoder.get_input_embeddings().weight[toy].detach()
    learned = load_embedding(result.embedding_path).single
    assert result.global_step == 3 and torch.isfinite(learned).all()
    assert not torch.allclose(learned, initial.expand_as(learned)), name


# ------------------------------------------------------------------------- schedule-free modes


def test_schedule_free_saves_and_validates_its_average_then_trains_on():
    p = torch.nn.Parameter(torch.zeros(4))
    _, _, optimizer, _ = steps_of(config(optimizer={"optimizer_type": "AdamWScheduleFree"}), params=p)
    training_point = p.detach().clone()
    optimizer.eval()
    average = p.detach().clone()
    optimizer.train()
    assert not torch.allclose(training_point, average)

    class Saver:  # as the recipe's save and validate methods
        def __init__(self):
            self.optimizer, self.seen = optimizer, []

        @with_averaged_weights
        def save(self):
            self.seen.append(p.detach().clone())
            self.nested()

        @with_averaged_weights
        def nested(self):  # stop() saves a checkpoint and the embedding: no second switch
            self.seen.append(p.detach().clone())

    saver = Saver()
    saver.save()
    assert all(torch.allclose(v, average) for v in saver.seen)
    assert optimizer.param_groups[0]["train_mode"] and torch.allclose(p.detach(), training_point)
    with averaged_weights(torch.optim.SGD([p], lr=0.1)):  # other optimizers: untouched
        assert torch.allclose(p.detach(), training_point)


def test_schedule_free_takes_the_warmup_and_ignores_schedules(caplog):
    cfg = config(optimizer={"optimizer_type": "AdamWScheduleFree"}, lr_warmup_steps=4, lr_scheduler="cosine")
    _, _, optimizer, rates = steps_of(cfg)
    assert optimizer.param_groups[0]["warmup_steps"] == 4 and rates == [1e-3] * 3  # the group's rate stays
    assert "needs no learning-rate schedule" in caplog.text


def test_schedule_free_takes_no_warmup_under_the_constant_schedule():
    # the diffusers script's line sets lr_warmup_steps=500 with lr_scheduler constant, which never warms up
    cfg = config(optimizer={"optimizer_type": "AdamWScheduleFree"}, lr_warmup_steps=500, lr_scheduler="constant")
    resolved = resolve_optimizer(cfg, cfg.learning_rate)
    assert "warmup_steps" not in resolved.kwargs
    assert any("constant_with_warmup" in note for note in resolved.notes)
    warm = config(optimizer={"optimizer_type": "AdamWScheduleFree"}, lr_warmup_steps=500,
                  lr_scheduler="constant_with_warmup")
    assert resolve_optimizer(warm, warm.learning_rate).kwargs["warmup_steps"] == 500


def test_schedule_free_checkpoints_hold_the_average(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=3, save_every_n_steps=2,
                      optimizer={"optimizer_type": "AdamWScheduleFree"})
    result = train(config_from_dict(cfg), progress=False)
    state = torch.load(result.checkpoint_dirs[0] / "training_state.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["train_mode"] is False  # saved in eval mode: the average
    saved = load_embedding(next(result.checkpoint_dirs[0].glob("*.safetensors"))).single
    assert torch.equal(saved, next(iter(state["vectors"].values())).to(saved.dtype))


# ------------------------------------------------------------------------------------ schedules


def rates_of(n=10, **overrides):
    """The learning rate of each of the first n updates (1e-2 base, 10 training steps)."""
    cfg = config(**{"optimizer": {"optimizer_type": "AdamW", "learning_rate": LR}, **overrides})
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg, [p], cfg.learning_rate)
    schedule = build_lr_scheduler(cfg, optimizer, 10, 1)
    rates = []
    for _ in range(n):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def cosine(s, warm=2, total=10, cycles=0.5, floor=0.0):
    if s < warm:
        return LR * s / warm
    progress = (s - warm) / (total - warm)
    return LR * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 2 * cycles * progress)))


EXPECTED = {
    "constant": lambda s: LR,
    "constant_with_warmup": lambda s: LR * min(1, s / 2),
    "linear": lambda s: LR * s / 2 if s < 2 else LR * (10 - s) / 8,
    "cosine": cosine,
    "cosine_with_restarts": lambda s: cosine(s) if s < 2 else LR * 0.5 * (1 + math.cos(math.pi * ((2 * (s - 2) / 8) % 1))),
    "polynomial": lambda s: LR * s / 2 if s < 2 else (LR - 1e-7) * (1 - (s - 2) / 8) ** 2 + 1e-7,
    "cosine_with_min_lr": lambda s: cosine(s, cycles=0.5, floor=0.1),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_schedule_rates_follow_their_formula(name):
    extra = {"lr_num_cycles": 2} if name == "cosine_with_restarts" else {"lr_power": 2} if name == "polynomial" \
        else {"lr_scheduler_min_lr_ratio": 0.1} if name == "cosine_with_min_lr" else {}
    rates = rates_of(lr_scheduler=name, lr_warmup_steps=2, **extra)
    assert rates == pytest.approx([EXPECTED[name](s) for s in range(10)], rel=1e-6, abs=1e-12), name


def test_warmup_as_a_fraction_and_a_percentage():
    assert rates_of(lr_scheduler="linear", lr_warmup_steps=0.2) == rates_of(lr_scheduler="linear", lr_warmup_steps=2)
    assert rates_of(lr_scheduler="linear", lr_warmup_steps="20%") == rates_of(lr_scheduler="linear", lr_warmup_steps=2)
    with pytest.raises(ConfigError, match="lr_warmup_steps: 2.5 is neither a whole number"):
        config(lr_warmup_steps=2.5)


def test_a1111_step_schedule_from_the_learning_rate():
    cfg = config(optimizer={"learning_rate": "5e-3:3, 1e-3:6, 1e-5"})
    assert cfg.learning_rate == 5e-3 and cfg.lr_step_schedule == "5e-3:3, 1e-3:6, 1e-5"
    # each rate until that many steps are done, the last one to the end
    assert rates_of(optimizer={"learning_rate": "5e-3:3, 1e-3:6, 1e-5"}) == pytest.approx([5e-3] * 3 + [1e-3] * 3
                                                                                         + [1e-5] * 4)
    assert rates_of(lr_step_schedule="0.01:2, 0.002:-1")[1:4] == pytest.approx([0.01, 0.002, 0.002])
    for bad, why in [("1e-3:100, 5e-4:50", "the steps must increase"), ("1e-3, 5e-4:50", "only the last rate"),
                     ("1e-3:x", "is not rate:step")]:
        with pytest.raises(ConfigError, match=why):
            config(lr_step_schedule=bad)
    with pytest.raises(ConfigError, match="lr_scheduler / lr_step_schedule: each sets the schedule; set only one"):
        config(lr_scheduler="cosine", lr_step_schedule="1e-3:10, 1e-4")


def test_piecewise_adafactor_and_class_schedules():
    assert rates_of(lr_scheduler="piecewise_constant", lr_scheduler_args={"step_rules": "1:3,0.1:6,0.01"}) == \
        pytest.approx([LR] * 3 + [LR / 10] * 3 + [LR / 100] * 4)
    assert rates_of(lr_scheduler_type="StepLR", lr_scheduler_args={"step_size": 4, "gamma": 0.5}) == \
        pytest.approx([LR] * 4 + [LR / 2] * 4 + [LR / 4] * 2)
    for overrides, why in [({"lr_scheduler": "adafactor"}, "adafactor only reports the rate"),
                           ({"lr_scheduler": "cosine_with_min_lr"}, "cosine_with_min_lr needs the lowest rate"),
                           ({"lr_scheduler": "piecewise_constant"}, "piecewise_constant needs lr_scheduler_args"),
                           ({"lr_scheduler_type": "NoSuchLR"}, "'NoSuchLR' is not a class of torch.optim.lr_scheduler"),
                           ({"lr_scheduler_type": "StepLR", "lr_warmup_steps": 5}, "lr_scheduler_type has no warm-up")]:
        with pytest.raises(ConfigError, match=why):
            config(**overrides)
    with pytest.raises(ConfigError, match="lr_scheduler_args: the cosine schedule refused"):
        rates_of(lr_scheduler="cosine", lr_scheduler_args={"bogus": 1})


def test_schedule_and_optimizer_state_resume_exactly(tiny_sd1, image_dir, tmp_path):
    # Prodigy's own step-size estimate and an A1111 schedule whose rate changes before and after the cut
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=6, save_every_n_steps=3,
                      train_batch_size=1, optimizer={"optimizer_type": "Prodigy", "learning_rate": "2:2, 1:4, 0.5"})
    full = train(config_from_dict(cfg), progress=False)
    expected = load_file(full.embedding_path)["emb_params"].clone()
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000003"
    train(config_from_dict({**cfg, "resume_from_checkpoint": str(half)}), progress=False)
    assert torch.equal(load_file(full.embedding_path)["emb_params"], expected)
