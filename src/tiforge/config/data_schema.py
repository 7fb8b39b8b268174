"""The training data's part of the config: dataset sources, aspect-ratio buckets and the data loader
(invoke-training's `data_loader` section, plus kohya's and A1111's options)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    # Unknown keys are refused: a misspelt option silently ignored costs a user hours of training.
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ImageDirDatasetConfig(StrictModel):
    """A folder of images; captions come from `caption_preset` / `caption_templates`."""

    type: Literal["IMAGE_DIR_DATASET"] = "IMAGE_DIR_DATASET"
    dataset_dir: str
    keep_in_memory: bool = False


class ImageCaptionDirDatasetConfig(StrictModel):
    """A folder of images, each with a same-name `.txt` caption file. Subfolders named
    `<repeats>_<name>` (kohya's layout) are read too, each image repeated that many times per epoch."""

    type: Literal["IMAGE_CAPTION_DIR_DATASET"] = "IMAGE_CAPTION_DIR_DATASET"
    dataset_dir: str
    keep_in_memory: bool = False
    caption_extension: str = ".txt"


class ImageCaptionJsonlDatasetConfig(StrictModel):
    """A JSONL file, one `{"image": path, "text": caption, "mask": path}` object per line; relative
    paths are relative to the file."""

    type: Literal["IMAGE_CAPTION_JSONL_DATASET"] = "IMAGE_CAPTION_JSONL_DATASET"
    jsonl_path: str
    image_column: str = "image"
    caption_column: str = "text"
    mask_column: str = "mask"
    keep_in_memory: bool = False


class HFHubImageCaptionDatasetConfig(StrictModel):
    """A Hugging Face `datasets` dataset: a hub name (online), a folder saved with `save_to_disk`, or
    an image folder with metadata (the `imagefolder` builder)."""

    type: Literal["HF_HUB_IMAGE_CAPTION_DATASET"] = "HF_HUB_IMAGE_CAPTION_DATASET"
    dataset_name: str
    dataset_config_name: str | None = None
    hf_cache_dir: str | None = None
    image_column: str = "image"
    caption_column: str = "text"
    mask_column: str | None = None
    split: str = "train"


class KohyaDatasetConfig(StrictModel):
    """A kohya-ss sd-scripts dataset `.toml` (`--dataset_config`): datasets, subsets and their options."""

    type: Literal["KOHYA_DATASET_CONFIG"] = "KOHYA_DATASET_CONFIG"
    config_path: str


DatasetConfig = Annotated[
    Union[ImageDirDatasetConfig, ImageCaptionDirDatasetConfig, ImageCaptionJsonlDatasetConfig,
          HFHubImageCaptionDatasetConfig, KohyaDatasetConfig],
    Field(discriminator="type"),
]


class AspectRatioBucketConfig(StrictModel):
    """Buckets of about target_resolution^2 pixels: one side runs from start_dim to end_dim in steps of
    divisible_by, the other follows from the area (invoke-training's form of kohya's enable_bucket)."""

    target_resolution: int = Field(gt=0)
    start_dim: int = Field(gt=0)
    end_dim: int = Field(gt=0)
    divisible_by: int = Field(64, gt=0)
    no_upscale: bool = False
    """kohya's bucket_no_upscale: a small image gets a bucket of its own size instead of being enlarged."""

    @model_validator(mode="after")
    def _sane(self) -> "AspectRatioBucketConfig":
        if self.start_dim > self.end_dim:
            raise ValueError(f"start_dim {self.start_dim} is larger than end_dim {self.end_dim}")
        if self.divisible_by % 8:
            raise ValueError(f"divisible_by must be a multiple of 8 (the VAE downsamples by 8), got {self.divisible_by}")
        if self.target_resolution < self.divisible_by:
            raise ValueError(
                f"target_resolution {self.target_resolution} is smaller than divisible_by {self.divisible_by}: no bucket "
                "fits; lower divisible_by (kohya: --bucket_reso_steps) or raise the resolution")
        return self


class TextualInversionSDDataLoaderConfig(StrictModel):
    type: Literal["TEXTUAL_INVERSION_SD_DATA_LOADER"] = "TEXTUAL_INVERSION_SD_DATA_LOADER"
    dataset: DatasetConfig
    caption_preset: Literal["object", "style"] | None = None
    caption_templates: list[str] | None = None
    keep_original_captions: bool = False
    aspect_ratio_buckets: AspectRatioBucketConfig | None = None
    resolution: int | tuple[int, int] = 512
    center_crop: bool = True
    """Crop the middle (true) or a random place (false) of each picture scaled to cover the resolution; no
    effect with squash, which crops nothing."""
    random_flip: bool = False
    shuffle_caption_delimiter: str | None = None
    dataloader_num_workers: int | None = Field(None, ge=0)
    """Worker processes that decode pictures beside training; null = automatic: none when latents
    are cached (nothing to decode), else up to 4, leaving a core for the training loop."""
    caption_templates_file: str | None = None
    """An A1111 template file: one template per line, `[name]` for the placeholder and `[filewords]`
    for the image's own caption (or its file name's words)."""
    keep_tokens: int = Field(0, ge=0)
    """kohya: with shuffling or tag dropout, the first keep_tokens comma-separated tags stay in place."""
    caption_dropout_rate: float = Field(0.0, ge=0, le=1)
    caption_tag_dropout_rate: float = Field(0.0, ge=0, le=1)
    color_aug: bool = False
    """kohya: small random hue shifts (not with cache_vae_outputs)."""
    on_bad_image: Literal["skip", "stop"] = "skip"
    """Unreadable, empty or mismatched files: train without them (and say which), or stop before training."""
    repeats: int = Field(1, ge=1)
    """Every picture this many times per epoch (the diffusers example's and invokeai-ti's --repeats, default
    100 there); multiplies kohya's per-folder repeats."""
    squash: bool = False
    """Resize each picture to the resolution as it is, without cropping (the diffusers example's and
    invokeai-ti's way unless --center_crop)."""
    reg_data_dir: str | None = None
    """kohya's regularization pictures: `<repeats>_<class>` folders whose pictures train with their own
    captions (or the folder's class words), at prior_loss_weight, balanced to the training pictures' count."""

    @field_validator("caption_templates")
    @classmethod
    def _one_slot_per_template(cls, templates: list[str] | None) -> list[str] | None:
        if templates is not None:
            if not templates:
                raise ValueError("caption_templates is empty; give at least one template such as 'a photo of a {}'")
            bad = [t for t in templates if t.count("{}") != 1]
            if bad:
                raise ValueError(f"each caption template needs exactly one '{{}}' slot for the placeholder; fix: {bad}")
        return templates

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, res: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = (res, res) if isinstance(res, int) else res
        if any(s <= 0 or s % 8 for s in sizes):
            raise ValueError(f"resolution must be positive and a multiple of 8 (the VAE downsamples by 8), got {res}")
        return res

    @property
    def uses_templates(self) -> bool:
        """Captions come from templates (a preset, a list, or an A1111 file), not only from the data."""
        return any(v is not None for v in (self.caption_preset, self.caption_templates, self.caption_templates_file))

    @property
    def height_width(self) -> tuple[int, int]:
        return (self.resolution, self.resolution) if isinstance(self.resolution, int) else tuple(self.resolution)


