"""Latent caching per flip variant: exact (the same pictures and captions as encoding every step),
automatic when exact, explicit choices honoured, and the VAE's encoder freed once caching ends."""

from __future__ import annotations

import shlex

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

import tiforge.training.recipe as recipe_module
from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.config.loading import config_from_dict
from tiforge.data.captions import Captioner
from tiforge.data.dataset import TextualInversionDataset
from tiforge.data.latent_cache import cache_vae_outputs, plan_caching
from tiforge.data.sources import DatasetError, find_records
from tiforge.frontends.cli import main
from tiforge.model.clip_tokenizer import load_clip_tokenizer
from tiforge.model.placeholders import Placeholder
from tiforge.training.recipe import train

from conftest import base_config, make_images

PH = Placeholder("<p>", ("<p>",), (49408,))


def lopsided_pictures(folder, n=3, size=24):
    """Pictures whose mirror image differs, each with a mask covering its left part only."""
    (folder / "masks").mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (size + 4 * i, size), (20 * i, 90, 160))
        ImageDraw.Draw(im).rectangle([0, 0, size // 3, size], fill=(250, 30 * i, 10))
        im.save(folder / f"p{i}.png")
        mask = Image.new("L", im.size, 0)
        mask.paste(255, (0, 0, size // 2, size))
        mask.save(folder / "masks" / f"p{i}.png")
    return folder


def test_cached_flip_variants_equal_encoding_each_step(tiny_sd1, tmp_path):
    folder = lopsided_pictures(tmp_path / "d")
    d = TextualInversionSDDataLoaderConfig(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)},
                                           caption_preset="object", resolution=16, random_flip=True)
    records = find_records(d, use_masks=True)

    tokenizers = [load_clip_tokenizer()]

    def dataset():
        return TextualInversionDataset(records, d, Captioner(d, PH), tokenizers, seed=5, use_masks=True)

    vae = AutoencoderKL.from_pretrained(tiny_sd1 / "vae").eval()
    uncached, cached = dataset(), dataset()
    stats = cache_vae_outputs(cached, vae, "cpu", torch.float32, batch_size=4)  # a batch of 4, then one of 2
    assert stats["encoded"] == 2 * len(records)  # each picture as is and mirrored
    seen = set()
    for epoch in (1, 2, 3):
        for index in range(len(records)):
            plain, fast = uncached[(epoch, index)], cached[(epoch, index)]
            assert fast["caption"] == plain["caption"]  # the generator is used the same way
            with torch.no_grad():
                expected = vae.encode(plain["pixel_values"][None]).latent_dist.parameters[0]
            torch.testing.assert_close(fast["latent_params"], expected, rtol=1e-4, atol=1e-5)
            assert torch.equal(fast["mask"], plain["mask"])  # the mask follows the variant
            assert torch.equal(fast["crop_top_left"], plain["crop_top_left"])
            seen.add(bool(plain["mask"][0, 0, -1] > 0.5))  # the mask's right edge trains only when mirrored
    assert seen == {False, True}  # both variants were drawn, so the check above compared both


def diffusers_line(model, data, out, *extra):
    return shlex.split(f"--pretrained_model_name_or_path={model} --train_data_dir={data} --learnable_property=object "
                       f"--placeholder_token=<t> --initializer_token=toy --resolution=32 --train_batch_size=1 "
                       f"--max_train_steps=2 --repeats=1 --dataloader_num_workers=0 --output_dir={out}") + list(extra)


def test_diffusers_command_line_caches_both_flips_automatically(tiny_sd1, image_dir, tmp_path, monkeypatch):
    calls = []
    real = recipe_module.cache_vae_outputs
    monkeypatch.setattr(recipe_module, "cache_vae_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["train", *diffusers_line(tiny_sd1, image_dir, tmp_path / "out")]) == 0
    log = next((tmp_path / "out").rglob("train.log")).read_text()
    assert "caching latents: 4 pictures x 2 flip variants (exact: the same as encoding each step)" in log
    assert calls == [1]


def plan(tmp_path, **overrides):
    cfg = config_from_dict(base_config("unused", make_images(tmp_path / "d", n=2), tmp_path / "out", **overrides))
    return plan_caching(cfg, find_records(cfg.data_loader))


def test_automatic_caching_stays_off_when_inexact_and_explicit_choices_win(tmp_path):
    auto = plan(tmp_path, data_loader__random_flip=True)
    assert auto.cache and "2 pictures x 2 flip variants" in auto.reason
    crop = plan(tmp_path, data_loader__center_crop=False)
    assert not crop.cache and crop.reason.startswith(f"not cached: random_crop in {tmp_path / 'd'}")
    assert not plan(tmp_path, data_loader__color_aug=True).cache
    # squashing crops nothing, so center_crop: false draws no random crop there
    assert plan(tmp_path, data_loader__center_crop=False, data_loader__squash=True).cache
    off = plan(tmp_path, cache_vae_outputs=False)
    assert not off.cache and "cache_vae_outputs: false" in off.reason
    assert plan(tmp_path, cache_vae_outputs=True, data_loader__random_flip=True).cache


def test_explicit_caching_with_a_random_crop_in_a_kohya_subset_is_refused(tmp_path):
    cfg = config_from_dict(base_config("unused", make_images(tmp_path / "d", n=2), tmp_path / "out",
                                       cache_vae_outputs=True))
    records = [r.__class__(r.image, r.caption, options=r.options.__class__(random_crop=True))
               for r in find_records(cfg.data_loader)]
    with pytest.raises(DatasetError, match="random_crop in .*cache_vae_outputs: false"):
        plan_caching(cfg, records)


def test_explicit_false_encodes_every_step(tiny_sd1, image_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe_module, "cache_vae_outputs", lambda *a, **k: pytest.fail("cached"))
    result = train(config_from_dict(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1,
                                                cache_vae_outputs=False)), progress=False)
    assert "not cached: cache_vae_outputs: false" in (result.run_dir / "train.log").read_text()


def test_vae_encoder_is_freed_after_caching_and_validation_still_decodes(tiny_sd1, image_dir, tmp_path, monkeypatch):
    kept = []
    real = recipe_module.release_vae
    monkeypatch.setattr(recipe_module, "release_vae", lambda parts, **k: (real(parts, **k), kept.append(parts)))
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1, validation_prompts=["a <thing>"],
                      num_validation_images_per_prompt=1, num_validation_inference_steps=1)
    result = train(config_from_dict(cfg), progress=False)
    vae = kept[0].vae
    assert vae.encoder is None and vae.quant_conv is None and vae.decoder is not None
    assert (result.validation_dirs[-1] / "grid.png").is_file()
    # nothing decodes without validation or sample prompts: the whole VAE goes
    kept.clear()
    train(config_from_dict(base_config(tiny_sd1, image_dir, tmp_path / "out2", max_train_steps=1)), progress=False)
    assert kept[0].vae is None


def test_half_precision_vae_encodes_in_float32_on_a_cpu_without_half_convolutions(tiny_sd1, image_dir, monkeypatch):
    from tiforge.data import latent_cache

    monkeypatch.setattr(latent_cache, "fast_half_convolutions", lambda dtype: False)
    assert latent_cache.encoding_dtype(torch.bfloat16, "cpu") == torch.float32
    assert latent_cache.encoding_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    d = TextualInversionSDDataLoaderConfig(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(image_dir)},
                                           caption_preset="object", resolution=16)
    ds = TextualInversionDataset(find_records(d), d, Captioner(d, PH), [load_clip_tokenizer()])
    vae = AutoencoderKL.from_pretrained(tiny_sd1 / "vae").eval().to(torch.bfloat16)
    cache_vae_outputs(ds, vae, "cpu", torch.bfloat16)
    assert vae.encoder.conv_in.weight.dtype == torch.float32 and vae.decoder.conv_in.weight.dtype == torch.bfloat16
    monkeypatch.setattr(latent_cache, "fast_half_convolutions", lambda dtype: True)
    assert latent_cache.encoding_dtype(torch.bfloat16, "cpu") == torch.bfloat16
