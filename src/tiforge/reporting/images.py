"""Pictures inlined into the report as data: URIs, so the page is one file that opens anywhere."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

MAX_INLINE_BYTES = 200_000  # a file this small goes in as it is, byte for byte
THUMBNAIL = 256  # larger ones go in as a JPEG this many pixels on the long side


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(image: Image.Image, size: int = 128) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    return _jpeg_uri(image)


def file_uri(path: Path, cache: dict) -> str:
    """A picture file as a data: URI: the file's own bytes when small, else a JPEG thumbnail. Cached by
    (path, size, mtime), so a refresh reads only new pictures."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in cache:
        if stat.st_size <= MAX_INLINE_BYTES:
            cache[key] = data_uri(path.read_bytes(), "image/png" if path.suffix.lower() == ".png" else "image/jpeg")
        else:
            with Image.open(path) as im:
                cache[key] = thumbnail_uri(im, THUMBNAIL)
    return cache[key]


def _jpeg_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")
