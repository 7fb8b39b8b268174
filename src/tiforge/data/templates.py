"""Caption templates for `caption_preset` (the `learnable_property` of the diffusers and InvokeAI
trainers): `object` phrases name a thing, `style` phrases name a look. `{}` is the placeholder."""

OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]

STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]

PRESETS = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def read_a1111_templates(path: str) -> list[str]:
    """An A1111 template file: one caption per line, `[name]` the embedding, `[filewords]` the
    picture's own words; blank lines are skipped."""
    from pathlib import Path

    from tiforge.data.sources import DatasetError

    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"data_loader.caption_templates_file {file}: no such file")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DatasetError(f"data_loader.caption_templates_file {file}: the file has no templates")
    no_name = [ln for ln in lines if "[name]" not in ln]
    if len(no_name) == len(lines):
        raise DatasetError(
            f"data_loader.caption_templates_file {file}: no line holds [name], so no caption would contain the "
            "placeholder; A1111's templates put [name] where the embedding goes (e.g. 'a photo of [name], [filewords]')"
        )
    return lines
