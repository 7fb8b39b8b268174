"""Every precision a config can express trains, validates, checkpoints, resumes and writes its embedding.

The full product (3 weight dtypes x 3 mixed precisions x 3 families x cached x validation x
gradient checkpointing = 324 runs) is too slow for the suite; every weight_dtype x mixed_precision x
family combination runs once (27), and the three on/off factors follow a pairwise covering design.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import load_embedding
from tiforge.training.recipe import train

from conftest import SDXL, base_config

WEIGHT_DTYPES = ["float32", "bfloat16", "float16"]
MIXED = ["no", "bf16", "fp16"]
FAMILIES = ["sd1", "sd2", "sdxl"]
# Every pair of (cached latents, validation, gradient checkpointing) values appears in these rows.
PAIRWISE = [(False, False, False), (False, True, True), (True, False, True), (True, True, False)]
MATRIX = [
    (w, m, f, *PAIRWISE[i % len(PAIRWISE)])
    for i, (w, m, f) in enumerate(itertools.product(WEIGHT_DTYPES, MIXED, FAMILIES))
]
RESUMED = {("bfloat16", "no", "sdxl"), ("float16", "fp16", "sd1"), ("float32", "bf16", "sd2")}


def test_the_design_covers_every_pair_of_on_off_factors():
    for a, b in itertools.combinations(range(3), 2):
        seen = {(row[3 + a], row[3 + b]) for row in MATRIX}
        assert seen == set(itertools.product([False, True], repeat=2))
    assert len({row[:3] for row in MATRIX}) == 27


def _config(models, family, weight_dtype, mixed, cached, validation, checkpointing, out, **extra):
    overrides = dict(max_train_steps=2, weight_dtype=weight_dtype, mixed_precision=mixed, cache_vae_outputs=cached,
                     gradient_checkpointing=checkpointing, train_batch_size=1, max_grad_norm=1.0,
                     data_loader__resolution=16, **extra)
    if validation:
        overrides.update(validation_prompts=["a <thing>"], num_validation_images_per_prompt=1,
                         num_validation_inference_steps=2)
    if family == "sdxl":
        overrides.update(SDXL)
        # SDXL users keep the VAE in float32 (no_half_vae) or swap in another one; both paths run.
        overrides["vae_dtype"] = {"float16": "float32", "bfloat16": "float16"}.get(weight_dtype)
        if mixed == "bf16":
            overrides["vae_model"] = str(models[family])
    return base_config(models[family], models["images"], out, **overrides)


@pytest.fixture(scope="module")
def models(tiny_sd1, tiny_sd2, tiny_sdxl, tmp_path_factory):
    from conftest import make_images

    return {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl,
            "images": make_images(tmp_path_factory.mktemp("precision") / "images", n=2)}


@pytest.mark.parametrize("weight_dtype,mixed,family,cached,validation,checkpointing", MATRIX,
                         ids=["-".join(map(str, row)) for row in MATRIX])
def test_every_precision_trains_validates_and_saves(models, tmp_path, weight_dtype, mixed, family, cached,
                                                     validation, checkpointing):
    resume = (weight_dtype, mixed, family) in RESUMED
    cfg = _config(models, family, weight_dtype, mixed, cached, validation, checkpointing, tmp_path / "out",
                  save_every_n_steps=1 if resume else None)
    result = train(config_from_dict(cfg), progress=False)

    assert result.global_step == 2 and result.final_loss is not None and result.final_loss == result.final_loss
    vectors = load_embedding(result.embedding_path).vectors
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in vectors.values())
    assert [d.name for d in result.validation_dirs] == (["final"] if validation else [])
    if validation:
        assert (result.validation_dirs[0] / "grid.png").is_file()
    if resume:
        checkpoint = result.run_dir / "checkpoints" / "checkpoint-step_00000001"
        resumed = train(config_from_dict({**cfg, "resume_from_checkpoint": str(checkpoint)}), progress=False)
        again = load_embedding(resumed.embedding_path).vectors
        assert resumed.global_step == 2
        assert all(torch.equal(again[k], vectors[k]) for k in vectors), "resuming changed the result"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_what_this_cpu_runs_in_half_precision(dtype):
    """The measured facts precision.py relies on; if torch drops one, this says which."""
    x = torch.randn(2, 8, 8, 8, dtype=dtype)
    assert F.conv2d(x, torch.randn(8, 8, 3, 3, dtype=dtype), padding=1).dtype == dtype
    assert F.group_norm(x, 4, torch.ones(8, dtype=dtype), torch.zeros(8, dtype=dtype)).dtype == dtype
    assert (x.flatten(1) @ torch.randn(512, 4, dtype=dtype)).dtype == dtype
    q = torch.randn(1, 2, 5, 8, dtype=dtype)
    assert F.scaled_dot_product_attention(q, q, q).dtype == dtype
    with torch.autocast("cpu", dtype=dtype):
        assert (torch.randn(3, 4) @ torch.randn(4, 2)).dtype == dtype


# --- one optimizer update with and without a gradient scaler ----------------------------------------


def _scaled_setup(grad, scale=1024.0):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale((p * torch.tensor(grad)).sum()).backward()  # p.grad = grad * scale
    return p, opt, scaler


def _update(p, opt, scaler, max_grad_norm):
    from tiforge.training.precision import guarded_update

    def step():
        scaler.step(opt)
        scaler.update()

    return guarded_update([p], max_grad_norm=max_grad_norm, scaler=scaler, unscale=lambda: scaler.unscale_(opt),
                          step=step)


def test_with_a_scaler_clipping_and_the_logged_norm_use_unscaled_gradients():
    p, opt, scaler = _scaled_setup([3.0, 4.0])
    assert float(p.grad.norm()) == 5.0 * 1024  # what the loop sees before unscaling
    outcome = _update(p, opt, scaler, max_grad_norm=1.0)
    assert outcome.finite and float(outcome.grad_norm) == pytest.approx(5.0)
    # clipped to norm 1 in true units, then one SGD step of lr 1
    assert torch.allclose(p.detach(), torch.tensor([-0.6, -0.8]), atol=1e-6)


def test_a_step_the_scaler_skips_counts_as_non_finite_and_lowers_the_scale():
    p, opt, scaler = _scaled_setup([float("inf"), 1.0])
    outcome = _update(p, opt, scaler, max_grad_norm=1.0)
    assert not outcome.finite and not torch.isfinite(outcome.grad_norm)
    assert torch.equal(p.detach(), torch.zeros(2)), "the scaler must not apply an overflowing step"
    assert scaler.get_scale() == 512.0, "the scaler saw the overflow and halved its scale"


def test_without_a_scaler_a_non_finite_gradient_skips_the_step_and_an_overflowing_update_is_undone():
    from tiforge.training.precision import guarded_update

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([float("nan"), 1.0])
    called = []
    outcome = guarded_update([p], max_grad_norm=None, step=lambda: called.append(1))
    assert not outcome.finite and not called

    p.grad = torch.tensor([1.0, 1.0])
    outcome = guarded_update([p], max_grad_norm=None, step=lambda: p.data.fill_(float("inf")))
    assert not outcome.finite and torch.equal(p.detach(), torch.zeros(2))


def test_fp16_on_the_cpu_trains_with_a_scaler_and_skipped_steps_stop_the_run(models, tmp_path, monkeypatch):
    import tiforge.training.recipe as train_module
    from tiforge.training.interrupts import TrainingStopped

    seen = {}
    real_update = train_module.guarded_update

    def spy(params, **kwargs):
        seen.setdefault("scalers", []).append(kwargs["scaler"])
        return real_update(params, **kwargs)

    real_loss = train_module.denoising_loss
    calls = {"n": 0}

    def overflowing(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("inf") if calls["n"] > 1 else loss

    monkeypatch.setattr(train_module, "guarded_update", spy)
    monkeypatch.setattr(train_module, "denoising_loss", overflowing)
    cfg = _config(models, "sd1", "float32", "fp16", True, False, False, tmp_path / "out", max_nonfinite_steps=2)
    cfg["max_train_steps"] = 10
    with pytest.raises(TrainingStopped, match="2 steps in a row had NaN/inf gradients"):
        train(config_from_dict(cfg), progress=False)
    assert all(isinstance(s, torch.amp.GradScaler) for s in seen["scalers"]) and len(seen["scalers"]) == 3
    run_dir = next((tmp_path / "out").iterdir())
    assert load_embedding(run_dir / "thing.safetensors").step == 1
