"""torch.compile of the UNet (the switch, kohya's flags, the auto rule, the fall-back to eager) and the
attention check. Compiling itself takes minutes on a CPU, so a failing compiler is stood in for."""

from __future__ import annotations

import logging

import pytest
import torch

from tiforge.config.flags import flags_to_overrides
from tiforge.config.schema import ConfigError
from tiforge.training import acceleration
from tiforge.training.acceleration import UNetRunner, check_attention, compile_wanted

from conftest import base_config


@pytest.mark.parametrize("argv, expected", [
    (["--torch_compile"], True),
    (["--torch_compile", "auto"], "auto"),
    (["--torch_compile=false"], False),
    (["--torch_compile=true", "--dynamo_backend", "inductor"], True),  # kohya's pair of flags
])
def test_torch_compile_flag_takes_true_false_and_auto(argv, expected):
    assert flags_to_overrides(argv)["torch_compile"] == expected


def test_a_wrong_torch_compile_value_is_named():
    with pytest.raises(ConfigError, match="--torch_compile=maybe: expected true or false or auto"):
        flags_to_overrides(["--torch_compile=maybe"])


def test_auto_compiles_only_where_the_measured_gain_repays_the_compile(monkeypatch):
    assert compile_wanted(True, "cpu", 1) and not compile_wanted(False, "cuda", 10**6)
    monkeypatch.setattr(acceleration, "MEASURED_COMPILE", {"cpu": (100.0, 0.5)})
    assert not compile_wanted("auto", "cpu", 200)  # 100 s saved = 100 s spent
    assert compile_wanted("auto", "cpu", 201)
    assert not compile_wanted("auto", "cuda", 10**9)  # not measured there: eager


class _Unet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.scale


def test_a_failing_compile_warns_once_and_runs_eager(monkeypatch, caplog):
    calls = []

    def broken_compiler(module):
        def compiled(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("BackendCompilerFailed: inductor could not lower aten.foo")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compiler)
    runner = UNetRunner(_Unet(), compiled=True)
    assert runner.is_compiled
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        assert runner(torch.tensor(3.0)).item() == 6.0
        assert runner(torch.tensor(4.0)).item() == 8.0
    assert not runner.is_compiled and len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "inductor could not lower" in warnings[0]


def test_a_run_asked_to_compile_finishes_when_the_compiler_fails(monkeypatch, tiny_sd1, image_dir, tmp_path, caplog):
    from tiforge.config.loading import config_from_dict
    from tiforge.training.recipe import train

    def broken_compiler(module):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compiler)
    cfg = config_from_dict(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, torch_compile=True))
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        result = train(cfg, progress=False)
    assert result.global_step == 2 and result.embedding_path.is_file()
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1


def test_attention_runs_through_sdpa_in_full_and_half_precision(tiny_sd1, caplog):
    from diffusers.models.attention_processor import AttnProcessor

    from tiforge.model.loading import load_sd_components

    for dtype in (torch.float32, torch.float16):
        parts = load_sd_components(str(tiny_sd1), None, None, dtype, sdxl=False)
        with caplog.at_level(logging.INFO, logger="tiforge"):
            caplog.clear()
            check_attention(parts)
        assert [r.levelno for r in caplog.records] == [logging.INFO], caplog.text
        assert "AttnProcessor2_0" in caplog.text and "sdpa" in caplog.text
    parts.unet.set_attn_processor(AttnProcessor())  # the unfused math path
    with caplog.at_level(logging.INFO, logger="tiforge"):
        caplog.clear()
        check_attention(parts)
    assert caplog.records[-1].levelno == logging.WARNING and "not fused" in caplog.text


def test_asking_to_compile_on_a_cpu_warns_of_the_wait(tiny_sd1, caplog):
    from types import SimpleNamespace

    from tiforge.model.loading import load_sd_components

    parts = load_sd_components(str(tiny_sd1), None, None, torch.float32, sdxl=False)
    with caplog.at_level(logging.INFO, logger="tiforge"):
        runner = acceleration.unet_runner(SimpleNamespace(torch_compile=True), parts, "cpu", 10)
        acceleration.unet_runner(SimpleNamespace(torch_compile=False), parts, "cpu", 10)
    assert runner.is_compiled  # torch.compile is lazy: nothing is compiled until the first call
    assert sum("many minutes" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("weight_dtype, expected", [("bfloat16", True), ("float16", True), ("float32", False)])
def test_half_precision_unet_goes_channels_last_on_the_cpu(weight_dtype, expected, tiny_sd1, image_dir, tmp_path):
    from tiforge.config.loading import config_from_dict
    from tiforge.model.loading import load_sd_components
    from tiforge.training.model_setup import DTYPES, prepare_frozen_model

    cfg = config_from_dict(base_config(tiny_sd1, image_dir, tmp_path, weight_dtype=weight_dtype))
    parts = load_sd_components(str(tiny_sd1), None, None, DTYPES[weight_dtype], sdxl=False)
    prepare_frozen_model(parts, cfg, torch.device("cpu"))
    weight = parts.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert weight.is_contiguous() is not expected


@pytest.mark.parametrize("weight_dtype, mixed, native, warned", [
    ("bfloat16", "no", False, "weight_dtype bfloat16"), ("float32", "fp16", False, "mixed_precision fp16"),
    ("bfloat16", "no", True, None), ("float32", "no", False, None),
])
def test_half_precision_without_native_kernels_is_called_slow(weight_dtype, mixed, native, warned, monkeypatch,
                                                              caplog):
    from types import SimpleNamespace

    monkeypatch.setattr(acceleration, "fast_half_convolutions", lambda dtype: native)
    with caplog.at_level(logging.WARNING, logger="tiforge"):
        acceleration.warn_emulated_half_precision(SimpleNamespace(weight_dtype=weight_dtype, mixed_precision=mixed),
                                                  "cpu")
        acceleration.warn_emulated_half_precision(SimpleNamespace(weight_dtype=weight_dtype, mixed_precision=mixed),
                                                  "cuda")
    slow = [r.getMessage() for r in caplog.records if "emulates" in r.getMessage()]
    assert (slow[0].startswith(warned) and "float32" in slow[0] and len(slow) == 1) if warned else not slow
