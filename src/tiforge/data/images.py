"""Pictures and masks as training reads them: any mode to RGB (EXIF rotation applied), masks from
files or the alpha channel, resize and crop (the crop recorded for SDXL), colour augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tiforge.data.sources import HFImage, Record


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the top 8 bits, not a clip
        arr = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray((arr >> (8 if arr.max() > 255 else 0)).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        im = Image.fromarray(np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")  # transparent parts become white
    return im.convert("RGB")


def open_image(source: Path | HFImage) -> Image.Image:
    """The picture as stored, fully decoded, EXIF orientation applied (phone photos store rotation there)."""
    if isinstance(source, HFImage):
        value = source.dataset[source.row][source.column]
        im = value if isinstance(value, Image.Image) else Image.open(value)
    else:
        im = Image.open(source)
    im.load()  # decode now: a truncated file fails here, not halfway through training
    return ImageOps.exif_transpose(im)


def load_image(source: Path | HFImage) -> Image.Image:
    return to_rgb(open_image(source))


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def load_mask(record: Record, picture: Image.Image | None = None) -> Image.Image | None:
    """White trains, black is ignored: the record's mask file, else the picture's own alpha channel
    (kohya's alpha_mask; any transparent picture when masks are on), else None (all of it trains).
    `picture` is the record's image as opened, to spare a second decode."""
    if record.mask is not None:
        im = open_image(record.mask)
        return im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("L")
    picture = picture if picture is not None else open_image(record.image)
    if has_alpha(picture):
        return picture.convert("RGBA").getchannel("A")
    return None


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    original_size: tuple[int, int]  # (height, width) before resizing; SDXL conditions on these


def resize_and_crop(
    image: Image.Image, size: tuple[int, int], center: bool, flip: bool, rng: torch.Generator | None = None,
    mask: Image.Image | None = None, squash: bool = False,
) -> tuple[torch.Tensor, Crop] | tuple[torch.Tensor, Crop, torch.Tensor]:
    """Scale to cover `size`, crop, maybe mirror; a mask goes through exactly the same steps. `squash`
    scales straight to `size` instead, whatever the aspect ratio (the diffusers example's way)."""
    height, width = size
    original = (image.height, image.width)
    scale = max(height / image.height, width / image.width)
    new_h, new_w = max(height, round(image.height * scale)), max(width, round(image.width * scale))
    if squash:
        new_h, new_w, center = height, width, True
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        top = int(torch.randint(new_h - height + 1, (), generator=rng).item())
        left = int(torch.randint(new_w - width + 1, (), generator=rng).item())
    box = (left, top, left + width, top + height)
    pixels = torch.from_numpy(np.asarray(image.crop(box), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    if flip:
        pixels = pixels.flip(-1)
    crop = Crop(top, left, original)
    if mask is None:
        return pixels, crop
    mask = mask.resize((new_w, new_h), Image.Resampling.BILINEAR).crop(box)
    weights = torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).float().unsqueeze(0) / 255.0
    return pixels, crop, weights.flip(-1) if flip else weights


def color_augment(pixels: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """kohya's color_aug in spirit: a small random hue rotation, plus slight saturation/brightness."""
    angle = (float(torch.rand((), generator=rng)) - 0.5) * 0.35  # about +-10 degrees
    c, s = np.cos(angle), np.sin(angle)
    k = 1 / 3 ** 0.5
    # rotation about the grey axis of RGB space (Rodrigues)
    rot = torch.tensor([
        [c + (1 - c) / 3, (1 - c) / 3 - k * s, (1 - c) / 3 + k * s],
        [(1 - c) / 3 + k * s, c + (1 - c) / 3, (1 - c) / 3 - k * s],
        [(1 - c) / 3 - k * s, (1 - c) / 3 + k * s, c + (1 - c) / 3],
    ], dtype=pixels.dtype)
    gain = 1 + (float(torch.rand((), generator=rng)) - 0.5) * 0.1
    return (torch.einsum("ij,jhw->ihw", rot, pixels) * gain).clamp(-1, 1)
