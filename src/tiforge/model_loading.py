"""Loading the frozen parts of a Stable Diffusion model from a hub id, a local diffusers folder or a
single .safetensors/.ckpt file."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what was found and what to do."""


@dataclass
class SdComponents:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any  # DDPM, for training; validation builds its own sampler from its config
    source: str

    @property
    def text_width(self) -> int:
        return self.text_encoder.get_input_embeddings().embedding_dim

    @property
    def family(self) -> str:
        return {768: "SD 1.x", 1024: "SD 2.x"}.get(self.text_width, "SD-architecture")


def _pipeline_class_of_folder(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    return json.loads(index.read_text()).get("_class_name")


def _refuse_sdxl(what: str, cls: str | None) -> None:
    if cls and "XL" in cls:
        raise ModelLoadError(
            f"model {what} is an SDXL model ({cls}), but this config trains SD 1.x/2.x "
            "(type: SD_TEXTUAL_INVERSION). Use an SD 1.x/2.x model, or train SDXL with "
            "type: SDXL_TEXTUAL_INVERSION."
        )


def _load_from_pretrained(name: str, variant: str | None, local_only: bool) -> SdComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_only}
    tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **kw)
    noise_scheduler = DDPMScheduler.from_pretrained(name, subfolder="scheduler", **kw)
    text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", variant=variant, **kw)
    vae = AutoencoderKL.from_pretrained(name, subfolder="vae", variant=variant, **kw)
    unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", variant=variant, **kw)
    return SdComponents(tokenizer, text_encoder, vae, unet, noise_scheduler, source=name)


def _load_single_file(path: Path, config_dir: str | None) -> SdComponents:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    kw: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if config_dir is not None:
        if not Path(config_dir).is_dir():
            raise ModelLoadError(f"single_file_config {config_dir}: not a folder")
        _refuse_sdxl(str(config_dir), _pipeline_class_of_folder(Path(config_dir)))
        kw.update(config=str(config_dir), local_files_only=True)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), **kw)
    except Exception as err:
        hint = (
            ""
            if config_dir
            else " Offline, diffusers cannot fetch the model's configs: set single_file_config to a local "
            "diffusers-format folder of the same architecture (configs and tokenizer are enough)."
        )
        raise ModelLoadError(f"model {path}: could not load the single-file checkpoint ({err}).{hint}") from err
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return SdComponents(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler, source=str(path))


def load_sd_components(model: str, hf_variant: str | None = None, single_file_config: str | None = None,
                       dtype=None) -> SdComponents:
    """Tokenizer, text encoder, VAE, UNet and a DDPM scheduler, with weights in `dtype` (default
    float32): libraries disagree on whether stored fp16 weights load as fp16, so tiforge decides."""
    import torch

    parts = _load(model, hf_variant, single_file_config)
    dtype = dtype or torch.float32
    for module in (parts.text_encoder, parts.vae, parts.unet):
        if module.dtype != dtype:
            module.to(dtype=dtype)
    return parts


def _load(model: str, hf_variant: str | None, single_file_config: str | None) -> SdComponents:
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"model {path}: expected a {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint file")
        return _load_single_file(path, single_file_config)
    if path.is_dir():
        cls = _pipeline_class_of_folder(path)
        if cls is None:
            raise ModelLoadError(
                f"model {path}: a folder without model_index.json is not a diffusers model folder. "
                "Point model at the folder that holds model_index.json, or at a single .safetensors/.ckpt file."
            )
        _refuse_sdxl(str(path), cls)
        # A variant names hub files (e.g. *.fp16.safetensors); local folders are loaded as they are.
        return _load_from_pretrained(str(path), None, local_only=True)
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise ModelLoadError(f"model {model}: no such file or folder, and not a hub id of the form 'owner/name'")
    return _load_from_hub(model, hf_variant)


def _load_from_hub(repo_id: str, variant: str | None) -> SdComponents:
    try:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(repo_id, "model_index.json"))
        _refuse_sdxl(repo_id, _pipeline_class_of_folder(index.parent))
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"model {repo_id}: could not fetch it from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, download the model elsewhere and point model at the local folder or .safetensors file."
        ) from err
    try:
        return _load_from_pretrained(repo_id, variant, local_only=False)
    except (OSError, ValueError) as err:
        if variant is None or variant not in str(err):
            raise ModelLoadError(f"model {repo_id}: {err}") from err
        log.warning("model %s has no %r variant; loading its default weights", repo_id, variant)
        return _load_from_pretrained(repo_id, None, local_only=False)
