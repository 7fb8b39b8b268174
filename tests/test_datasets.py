"""Training data as users have it: JSONL, Hugging Face datasets, kohya .toml and folders, A1111
templates, masks, aspect-ratio buckets, the disk latent cache, and bad files named, not crashed on."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import tiforge.training.recipe as train_module
from tiforge.model.clip_tokenizer import load_clip_tokenizer
from tiforge.frontends.cli import main
from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.config.loading import config_from_dict
from tiforge.data.dataset import TextualInversionDataset, collate, make_dataloader
from tiforge.data.sources import DatasetError
from tiforge.data.captions import Captioner
from tiforge.data.sources import find_records
from tiforge.data.checks import scan_records
from tiforge.model.loss import denoising_loss
from tiforge.model.placeholders import Placeholder
from tiforge.training.events import on_steps
from tiforge.training.recipe import train

from conftest import SDXL, base_config, make_images

PH = Placeholder("<p>", ("<p>",), (49408,))


def dl(**kw) -> TextualInversionSDDataLoaderConfig:
    return TextualInversionSDDataLoaderConfig(**kw)


def run(cfg):
    return train(config_from_dict(cfg), progress=False)


# ------------------------------------------------------------------------------------ sources


def test_jsonl_with_relative_paths_masks_and_named_bad_lines(tmp_path):
    images = make_images(tmp_path / "imgs", n=2)
    Image.new("L", (48, 48), 255).save(tmp_path / "m0.png")
    lines = [{"image": "imgs/img_0.png", "text": "a <p> toy", "mask": "m0.png"},
             {"image": str(images / "img_1.png"), "text": "<p> again"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = find_records(dl(dataset={"type": "IMAGE_CAPTION_JSONL_DATASET", "jsonl_path": str(path)}), use_masks=True)
    assert [r.image for r in records] == [images / "img_0.png", images / "img_1.png"]
    assert records[0].caption == "a <p> toy" and records[0].mask == tmp_path / "m0.png" and records[1].mask is None

    path.write_text(json.dumps(lines[0]) + "\n{oops\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"(?s)data.jsonl:2: not valid JSON.*data.jsonl:3: no 'image' field"):
        find_records(dl(dataset={"type": "IMAGE_CAPTION_JSONL_DATASET", "jsonl_path": str(path)}))


def test_hugging_face_dataset_saved_to_disk_trains(tiny_sd1, tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (40, 32), (i * 60, 20, 200)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "caption": [f"a <thing> number {i}" for i in range(3)]},
                                    features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    cfg = base_config(tiny_sd1, tmp_path, tmp_path / "out", max_train_steps=2,
                      data_loader={"dataset": {"type": "HF_HUB_IMAGE_CAPTION_DATASET", "dataset_name": str(tmp_path / "saved"),
                                               "caption_column": "caption"}, "resolution": 32})
    assert run(cfg).global_step == 2
    with pytest.raises(DatasetError, match=r"caption_column 'text': the dataset's columns are \['image', 'caption'\]"):
        run({**cfg, "data_loader": {**cfg["data_loader"], "dataset": {**cfg["data_loader"]["dataset"], "caption_column": "text"}}})


def test_kohya_toml_subsets_options_and_errors(tmp_path):
    a = make_images(tmp_path / "a", n=2, captions=["<p>, red, round, shiny"])
    b = make_images(tmp_path / "b", n=1)
    toml = tmp_path / "d.toml"
    toml.write_text(f"""[general]
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
[[datasets]]
resolution = [48, 32]
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{a}"
  num_repeats = 3
  flip_aug = true
  [[datasets.subsets]]
  image_dir = "{b.name}"
  class_tokens = "<p> toy"
  caption_prefix = "photo,"
""")
    records = find_records(dl(dataset={"type": "KOHYA_DATASET_CONFIG", "config_path": str(toml)}))
    assert [(r.name, r.repeats, r.caption) for r in records] == [
        ("img_0.png", 3, "<p>, red, round, shiny"), ("img_1.png", 3, "<p>, red, round, shiny"), ("img_0.png", 1, "<p> toy")]
    assert records[0].options.flip and records[0].options.keep_tokens == 1 and not records[2].options.flip
    cap = Captioner(dl(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": "x"}, caption_preset="object"), PH)
    cap.templates = None
    shuffled = {cap(records[0].caption, torch.Generator().manual_seed(i), records[0]) for i in range(30)}
    assert len(shuffled) > 2 and all(s.startswith("<p>, ") for s in shuffled)  # the kept first tag stays first
    assert cap(records[2].caption, None, records[2]) == "photo, <p> toy"

    toml.write_text(f'[[datasets]]\nresolution = 32\nbatch_sise = 2\n  [[datasets.subsets]]\n  image_dir = "{a}"\n  token_warmup_min = 1\n')
    with pytest.raises(DatasetError, match=r"(?s)datasets\[0\].batch_sise: unknown key \(did you mean batch_size\?\).*token_warmup_min: token warmup"):
        find_records(dl(dataset={"type": "KOHYA_DATASET_CONFIG", "config_path": str(toml)}))


def test_kohya_repeats_folders_from_train_data_dir(tmp_path):
    make_images(tmp_path / "data" / "5_mychar", n=2, captions=["mychar smiling"])
    make_images(tmp_path / "data" / "2_mychar other", n=1)
    records = find_records(dl(dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(tmp_path / "data")}))
    assert [(r.repeats, r.caption) for r in records] == [(2, "mychar other"), (5, "mychar smiling"), (5, "mychar smiling")]


def test_a1111_template_file_with_name_and_filewords(tmp_path):
    folder = make_images(tmp_path / "d", n=1)
    (folder / "img_0.png").rename(folder / "red_ball_01.png")
    templates = tmp_path / "style_filewords.txt"
    templates.write_text("a painting of [filewords], art by [name]\n\n")
    d = dl(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)}, caption_templates_file=str(templates))
    record = find_records(d)[0]
    assert Captioner(d, PH)(record.caption, None, record) == "a painting of red ball, art by <p>"
    templates.write_text("a painting\n")
    with pytest.raises(DatasetError, match=r"no line holds \[name\]"):
        Captioner(d, PH)


# -------------------------------------------------------------------------------------- masks


def test_mask_follows_resize_crop_and_flip(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    Image.new("RGB", (64, 32), (10, 200, 10)).save(folder / "a.png")
    (folder / "masks").mkdir()
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 32, 32))  # the left half trains
    mask.save(folder / "masks" / "a.png")
    d = dl(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)}, caption_preset="object", resolution=16,
           center_crop=False, random_flip=True)
    records = find_records(d, use_masks=True)
    assert records[0].mask == folder / "masks" / "a.png"
    ds = TextualInversionDataset(records, d, Captioner(d, PH), [], use_masks=True)
    flips = set()
    for seed in range(12):
        pixels, crop, weights = ds.image_tensors(0, torch.Generator().manual_seed(seed))
        assert pixels.shape == (3, 16, 16) and weights.shape == (1, 16, 16)
        # 64x32 -> 32x16, then a random 16x16 window at `left`: the trained columns are those left of 16
        expected = (torch.arange(16) + crop.left < 16).float()
        got = (weights[0, 0] > 0.5).float()  # the resize softens the edge by a pixel
        assert torch.equal(got, expected) or torch.equal(got, expected.flip(0)), (seed, crop)
        if 0 < crop.left < 16:
            flips.add(not torch.equal(got, expected))
    assert flips == {True, False}, "neither flips nor non-flips were exercised"


def test_masked_out_half_sends_no_gradient():
    class Predictor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Parameter(torch.randn(1, 4, 8, 8))

        def forward(self, noisy, t, hidden, return_dict=False):
            return (self.out.expand_as(noisy),)

    from diffusers import DDPMScheduler

    unet, sched = Predictor(), DDPMScheduler()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1  # left half of the picture
    loss = denoising_loss(unet, sched, torch.randn(1, 4, 8, 8), None, prediction_type="epsilon", min_snr_gamma=None,
                          noise=torch.randn(1, 4, 8, 8), timesteps=torch.tensor([500]), mask=mask)
    loss.backward()
    grad = unet.out.grad[0]
    assert torch.all(grad[..., 4:] == 0) and torch.all(grad[..., :4].abs().sum() > 0)


def test_training_with_masks_and_a_mismatched_mask_named(tiny_sd1, tmp_path):
    folder = make_images(tmp_path / "d", n=3)
    (folder / "masks").mkdir()
    for i in range(3):
        Image.new("L", (48 + 8 * i, 48), 255).save(folder / "masks" / f"img_{i}.png")
    cfg = base_config(tiny_sd1, folder, tmp_path / "out", max_train_steps=2, use_masks=True, cache_vae_outputs=True)
    assert run(cfg).global_step == 2
    Image.new("L", (10, 10), 255).save(folder / "masks" / "img_1.png")
    with pytest.raises(DatasetError, match=r"(?s)img_1.png: mask .*is 10x10 but the image is 56x48"):
        run({**cfg, "data_loader": {**cfg["data_loader"], "on_bad_image": "stop"}})


# ------------------------------------------------------------------------------------- buckets


def _shapes(folder, sizes):
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 30, 100, 100)).save(folder / f"s{i}.png")
        (folder / f"s{i}.txt").write_text("a <thing>")
    return folder


def test_buckets_keep_aspect_and_batch_by_bucket(tmp_path):
    folder = _shapes(tmp_path / "d", [(64, 32), (66, 30), (32, 64), (30, 66), (40, 40), (64, 33)])
    d = dl(dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(folder)},
           aspect_ratio_buckets={"target_resolution": 32, "start_dim": 16, "end_dim": 64, "divisible_by": 8})
    records = find_records(d)
    ds = TextualInversionDataset(records, d, Captioner(d, PH), [load_clip_tokenizer()],
                                 sizes=scan_records(records, (32, 32), False).sizes)
    wide, tall = ds.targets[0], ds.targets[2]
    assert wide[1] > wide[0] and tall[0] > tall[1] and ds.targets[4][0] == ds.targets[4][1]
    loader = make_dataloader(ds, batch_size=2, num_workers=0)
    for epoch in (1, 2):
        loader.batch_sampler.begin(epoch)
        batches = list(loader)
        assert sum(len(b["caption"]) for b in batches) == 6
        for b in batches:
            assert b["pixel_values"].shape[-2:] == tuple(b["target_size"][0].tolist())
            assert all(tuple(t.tolist()) == tuple(b["target_size"][0].tolist()) for t in b["target_size"])


def test_sdxl_trains_with_buckets_and_feeds_each_bucket_size(tiny_sdxl, tmp_path, monkeypatch):
    folder = _shapes(tmp_path / "d", [(64, 32), (32, 64), (64, 32), (32, 64)])
    seen = []
    real = train_module.unet_conditioning
    monkeypatch.setattr(train_module, "unet_conditioning",
                        lambda enc, ids, batch, *rest: seen.append(batch["target_size"].clone()) or real(enc, ids, batch, *rest))
    cfg = base_config(tiny_sdxl, folder, tmp_path / "out", **SDXL, max_train_steps=4, train_batch_size=2,
                      data_loader={"dataset": {"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(folder)},
                                   "resolution": 32, "aspect_ratio_buckets": {"target_resolution": 32, "start_dim": 16,
                                                                              "end_dim": 64, "divisible_by": 8}})
    assert run(cfg).global_step == 4
    assert {tuple(t[0].tolist()) for t in seen} == {(24, 40), (40, 24)}


# -------------------------------------------------------------------------------- latent cache


def test_disk_latent_cache_is_reused_and_invalidated(tiny_sd1, image_dir, tmp_path, monkeypatch):
    calls = []
    real_loader = train_module.load_sd_components

    def counting_loader(*args, **kwargs):
        parts = real_loader(*args, **kwargs)
        encode = parts.vae.encode
        parts.vae.encode = lambda x, *a, **k: calls.append(x.shape[0]) or encode(x, *a, **k)
        return parts

    monkeypatch.setattr(train_module, "load_sd_components", counting_loader)
    cache = tmp_path / "cache"
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, cache_vae_outputs=True,
                      cache_vae_outputs_to_disk=True, latent_cache_dir=str(cache))
    first = run(cfg)
    assert len(calls) == 4 and len(list(cache.glob("*.safetensors"))) == 4
    calls.clear()
    second = run(cfg)
    assert calls == [], "the second run encoded images again"
    assert torch.equal(load_file(first.embedding_path)["emb_params"], load_file(second.embedding_path)["emb_params"])
    Image.new("RGB", (48, 48), (1, 2, 3)).save(image_dir / "img_2.png")  # one image changes
    run(cfg)
    assert len(calls) == 1
    calls.clear()
    run({**cfg, "data_loader": {**cfg["data_loader"], "resolution": 40}})  # a new size: all new latents
    assert len(calls) == 4


# ------------------------------------------------------------------------------ bad input


def _bad_folder(tmp_path):
    folder = make_images(tmp_path / "d", n=2, captions=["a <thing>"])
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty.txt").write_text("a <thing>")
    good = (folder / "img_0.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "cut.txt").write_text("a <thing>")
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    (folder / "cmyk.txt").write_text("a <thing>")
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(folder / "deep.png")
    (folder / "deep.txt").write_text("a <thing>")
    pal = Image.new("P", (48, 48), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(folder / "pal.png", transparency=0)
    (folder / "pal.txt").write_text("a <thing>")
    rotated = Image.new("RGB", (60, 30), (0, 0, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(folder / "rot.jpg", exif=exif)
    (folder / "rot.txt").write_text("a <thing>")
    Image.new("RGB", (12, 12)).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("a <thing> " + "word " * 80)
    Image.new("RGB", (48, 48)).save(folder / "nocaption.png")
    return folder


def test_bad_files_are_named_handled_and_skipped_or_stop(tiny_sd1, tmp_path, capsys):
    folder = _bad_folder(tmp_path)
    cfg = base_config(tiny_sd1, folder, tmp_path / "out", max_train_steps=2,
                      data_loader={"dataset": {"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(folder)},
                                   "resolution": 32})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["dataset", "check", str(path)]) == 0
    out = capsys.readouterr().out
    for name, what in [("empty.png", "empty file (0 bytes)"), ("cut.png", "unreadable or truncated image"),
                       ("nocaption.png", "no caption file nocaption.txt"), ("cmyk.jpg", "CMYK image: converted to RGB"),
                       ("deep.png", "scaled to 8-bit RGB"), ("pal.png", "palette image"), ("rot.jpg", "EXIF orientation 6"),
                       ("tiny.png", "12x12 is smaller than the training size 32x32")]:
        assert any(name in line and what in line for line in out.splitlines()), (name, what)
    assert "TRUNCATED" in out and "exceed 77 tokens" in out and "[49408] [49409]" in out
    assert "rot.jpg  30x60" in out  # EXIF rotation applied: 60x30 stored, 30x60 upright
    assert "bad items (training goes on without them" in out

    result = run(cfg)
    assert result.global_step == 2
    log = (result.run_dir / "train.log").read_text()
    assert "training without 3 bad item(s)" in log and "cut.png" in log

    with pytest.raises(DatasetError, match=r"3 bad training item\(s\) \(data_loader.on_bad_image is stop\)"):
        run({**cfg, "data_loader": {**cfg["data_loader"], "on_bad_image": "stop"}})


def test_a_file_that_breaks_mid_run_does_not_end_it(tiny_sd1, tmp_path):
    folder = make_images(tmp_path / "d", n=4, size=32)
    # uncached: with cached latents nothing reads the files again after start-up
    cfg = base_config(tiny_sd1, folder, tmp_path / "out", max_train_steps=4, train_batch_size=1,
                      cache_vae_outputs=False)

    def break_a_file(info):
        if info.step == 1:
            (folder / "img_2.png").write_bytes(b"not a picture any more")

    result = train(config_from_dict(cfg), progress=False, listener=on_steps(break_a_file))
    assert result.global_step == 4
    assert "img_2.png: unreadable during training" in (result.run_dir / "train.log").read_text()


def test_cli_dataset_check_with_flags_only(tmp_path, capsys):
    folder = make_images(tmp_path / "d", n=2)
    assert main(["dataset", "check", "--pretrained_model_name_or_path", "unused/model", "--train_data_dir", str(folder),
                 "--learnable_property", "style", "--placeholder_token", "<s>", "--initializer_token", "art",
                 "--num_vectors", "2", "--max_train_steps", "1", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "in the style of <s> <s>_1" in out and "2 usable, 0 bad" in out


def test_collate_stacks_masks_and_sizes(tmp_path):
    folder = make_images(tmp_path / "d", n=2)
    d = dl(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)}, caption_preset="object", resolution=32)
    tok = load_clip_tokenizer()
    tok.add_tokens(["<p>"])
    ds = TextualInversionDataset(find_records(d, use_masks=True), d, Captioner(d, PH), [tok], use_masks=True)
    batch = collate([ds[(1, 0)], ds[(1, 1)]])
    assert batch["mask"].shape == (2, 1, 32, 32) and torch.all(batch["mask"] == 1)  # no mask: all of it trains
    assert batch["target_size"].tolist() == [[32, 32], [32, 32]]


def test_bucket_sizes_and_no_upscale():
    from tiforge.data.buckets import bucket_sizes, choose_bucket
    from tiforge.config.data_schema import AspectRatioBucketConfig

    cfg = AspectRatioBucketConfig(target_resolution=512, start_dim=256, end_dim=1024, divisible_by=64)
    sizes = bucket_sizes(cfg)
    assert (512, 512) in sizes and all(h % 64 == 0 and w % 64 == 0 and h * w <= 512 * 512 for h, w in sizes)
    assert choose_bucket((600, 1200), sizes, cfg) == (320, 704)  # 2:1 landscape -> the bucket nearest 2:1 (2.2)
    assert choose_bucket((300, 200), sizes, cfg)[0] > choose_bucket((300, 200), sizes, cfg)[1]
    small = cfg.model_copy(update={"no_upscale": True})
    assert choose_bucket((300, 200), sizes, small) == (256, 192)  # its own size, rounded down; not enlarged
    assert choose_bucket((900, 900), sizes, small) == (512, 512)


def test_alpha_channel_is_the_mask_when_there_is_no_mask_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rgba = Image.new("RGBA", (32, 32), (200, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 16, 32))  # the left half is opaque
    rgba.save(folder / "a.png")
    d = dl(dataset={"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)}, caption_preset="object", resolution=32)
    records = find_records(d, use_masks=True)
    assert records[0].mask is None
    scan = scan_records(records, (32, 32), use_masks=True)
    assert ("a.png", "no mask file: its alpha channel is the mask") in scan.notes
    ds = TextualInversionDataset(records, d, Captioner(d, PH), [], use_masks=True)
    pixels, _, weights = ds.image_tensors(0)
    assert torch.equal(weights[0, :, :16], torch.ones(32, 16)) and torch.equal(weights[0, :, 16:], torch.zeros(32, 16))
    assert torch.allclose(pixels[:, :, 16:], torch.ones(3, 32, 16))  # transparent parts train as white
