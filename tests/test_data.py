import pytest
import torch
from PIL import Image

from tiforge.config.data_schema import TextualInversionSDDataLoaderConfig
from tiforge.data.dataset import TextualInversionDataset, collate
from tiforge.data.sources import find_records
from tiforge.data.sources import DatasetError
from tiforge.data.images import load_image, resize_and_crop
from tiforge.data.captions import Captioner
from tiforge.data.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES
from tiforge.model.placeholders import Placeholder

from conftest import make_images

PH = Placeholder("<p>", ("<p>", "<p>_1"), (49408, 49409))


def dl_config(folder, **kw):
    dataset = kw.pop("dataset", {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(folder)})
    return TextualInversionSDDataLoaderConfig(dataset=dataset, **kw)


def test_presets_fill_the_placeholder_and_expand_it():
    torch.manual_seed(0)
    cap = Captioner(dl_config("x", caption_preset="style"), PH)
    captions = {cap(None) for _ in range(50)}
    assert len(captions) > 5
    assert all("<p> <p>_1" in c for c in captions)
    assert all(any(c == t.format("<p> <p>_1") for t in STYLE_TEMPLATES) for c in captions)
    assert len(OBJECT_TEMPLATES) > 20


def test_keep_original_captions_prefixes_the_template():
    cap = Captioner(dl_config("x", caption_templates=["a photo of {}"], keep_original_captions=False), PH)
    assert cap("red ball") == "a photo of <p> <p>_1"
    dl = dl_config("x", dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": "x"},
                   caption_templates=["a photo of {}"], keep_original_captions=True)
    assert Captioner(dl, PH)("red ball") == "a photo of <p> <p>_1 red ball"


def test_original_captions_expand_the_placeholder_anywhere():
    dl = dl_config("x", dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": "x"})
    assert Captioner(dl, PH)("<p> on grass, next to <p>") == "<p> <p>_1 on grass, next to <p> <p>_1"


def test_shuffle_caption_delimiter_permutes_parts():
    torch.manual_seed(1)
    dl = dl_config("x", dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": "x"}, shuffle_caption_delimiter=",")
    cap = Captioner(dl, PH)
    seen = {cap("<p>, red, round, shiny") for _ in range(40)}
    assert len(seen) > 3
    assert all(sorted(s.split(", ")) == sorted(["<p> <p>_1", "red", "round", "shiny"]) for s in seen)


def test_a_missing_caption_file_is_named_and_skipped_or_stops(tmp_path):
    from tiforge.data.checks import apply_policy, scan_records

    folder = make_images(tmp_path / "d", n=3, captions=["a <p>"])
    (folder / "img_1.txt").unlink()
    dl = dl_config(folder, dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(folder)})
    scan = scan_records(find_records(dl), (32, 32), use_masks=False)
    assert scan.problems == [("img_1.png", "no caption file img_1.txt")]
    assert [r.name for r in apply_policy(scan, "skip")] == ["img_0.png", "img_2.png"]
    with pytest.raises(DatasetError, match=r"(?s)1 bad training item\(s\) \(data_loader.on_bad_image is stop\).*img_1.png"):
        apply_policy(scan, "stop")


def test_empty_or_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        find_records(dl_config(tmp_path / "nope", caption_preset="object"))
    with pytest.raises(DatasetError, match="no .png/.jpg/.jpeg/.webp.* images found"):
        find_records(dl_config(tmp_path, caption_preset="object"))


def test_resize_and_crop_keeps_aspect_and_records_crop():
    im = Image.new("RGB", (100, 50), (255, 0, 0))
    pixels, crop = resize_and_crop(im, (32, 32), center=True, flip=False)
    assert pixels.shape == (3, 32, 32) and crop.original_size == (50, 100)
    assert crop.top == 0 and crop.left == (64 - 32) // 2
    assert torch.allclose(pixels[0], torch.ones(32, 32)) and torch.allclose(pixels[1], -torch.ones(32, 32))


def test_flip_mirrors_the_image():
    im = Image.new("RGB", (32, 32))
    im.paste((255, 255, 255), (0, 0, 8, 32))
    plain, _ = resize_and_crop(im, (32, 32), center=True, flip=False)
    flipped, _ = resize_and_crop(im, (32, 32), center=True, flip=True)
    assert torch.equal(plain.flip(-1), flipped)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_dataset_items_and_collate(tmp_path):
    from tiforge.model.clip_tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    tok.add_tokens(list(PH.tokens))
    folder = make_images(tmp_path / "d", n=3)
    dl = dl_config(folder, caption_preset="object", resolution=32, dataset={"type": "IMAGE_DIR_DATASET",
                   "dataset_dir": str(folder), "keep_in_memory": True})
    ds = TextualInversionDataset(find_records(dl), dl, Captioner(dl, PH), tok)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == (2, 1, 77)
    assert (batch["input_ids"] == 49408).sum() == 2 and (batch["input_ids"] == 49409).sum() == 2


def test_epoch_order_depends_on_seed_and_epoch_and_can_skip():
    from tiforge.data.dataset import EpochSampler

    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    a.begin(3)
    b.begin(3, skip=4)
    full = list(a)
    assert sorted(i for _, i in full) == list(range(10)) and all(e == 3 for e, _ in full)
    assert list(b) == full[4:] and len(b) == 6
    a.begin(4)
    assert list(a) != full
