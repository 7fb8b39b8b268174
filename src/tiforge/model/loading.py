"""Loading the frozen parts of a Stable Diffusion model (SD 1.x/2.x or SDXL) from a hub id, a local
diffusers folder or a single .safetensors/.ckpt file, after checking that the model is of the family
the config trains."""

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
    tokenizer_2: Any = None  # SDXL's second (OpenCLIP bigG) text encoder
    text_encoder_2: Any = None
    # SDXL pipelines condition "no negative prompt" on zeros unless the model says otherwise
    force_zeros_for_empty_prompt: bool = True

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_width(self) -> int:
        return self.text_encoder.get_input_embeddings().embedding_dim

    @property
    def text_encoders(self) -> list[tuple[str, Any, Any]]:
        """(name, tokenizer, text encoder) per encoder; the names are the SDXL embedding file's keys."""
        if self.is_sdxl:
            return [("clip_l", self.tokenizer, self.text_encoder), ("clip_g", self.tokenizer_2, self.text_encoder_2)]
        return [("text_encoder", self.tokenizer, self.text_encoder)]

    @property
    def frozen_modules(self) -> list[Any]:
        return [m for m in (self.vae, self.unet, self.text_encoder, self.text_encoder_2) if m is not None]

    @property
    def family(self) -> str:
        if self.is_sdxl:
            return "SDXL"
        from tiforge.model.family import sd_family

        return sd_family(self.text_encoder, self.unet)


def _pipeline_class_of_folder(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    return json.loads(index.read_text()).get("_class_name")


def _check_family(what: str, cls: str | None, sdxl: bool) -> None:
    """Refuse a model of the other family before its weights are read, naming what to set instead."""
    if cls is None:
        return
    if "Img2Img" in cls and "XL" in cls:
        raise ModelLoadError(
            f"model {what} is an SDXL refiner ({cls}): it has only the OpenCLIP text encoder, so embeddings trained "
            "on it fit nothing else. Use an SDXL base model (e.g. stabilityai/stable-diffusion-xl-base-1.0)."
        )
    if "XL" in cls and not sdxl:
        raise ModelLoadError(
            f"model {what} is an SDXL model ({cls}), but this config trains SD 1.x/2.x "
            "(type: SD_TEXTUAL_INVERSION). Use an SD 1.x/2.x model, or train SDXL with "
            "type: SDXL_TEXTUAL_INVERSION (--sdxl on the command line)."
        )
    if "XL" not in cls and sdxl:
        raise ModelLoadError(
            f"model {what} is an SD 1.x/2.x model ({cls}), but this config trains SDXL "
            "(type: SDXL_TEXTUAL_INVERSION), so model must refer to an SDXL model. Use an SDXL model "
            "(e.g. stabilityai/stable-diffusion-xl-base-1.0), or train SD 1.x/2.x with type: SD_TEXTUAL_INVERSION."
        )


# Keys that tell the families apart in an original-layout single file (as diffusers detects them).
_SDXL_FILE_KEY = "conditioner.embedders.1.model.positional_embedding"
_SDXL_REFINER_FILE_KEY = "conditioner.embedders.0.model.text_projection"
_SD_FILE_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
                 "cond_stage_model.model.token_embedding.weight")


def _single_file_class(path: Path) -> str | None:
    """The pipeline class a .safetensors checkpoint holds, read from its key names alone (no weights)."""
    if path.suffix.lower() != ".safetensors":
        return None  # pickles would have to be unpickled whole; their loader says what it finds
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except Exception as err:
        raise ModelLoadError(f"model {path}: not a readable safetensors file ({err})") from None
    if _SDXL_FILE_KEY in keys:
        return "StableDiffusionXLPipeline"
    if _SDXL_REFINER_FILE_KEY in keys:
        return "StableDiffusionXLImg2ImgPipeline"
    if any(k in keys for k in _SD_FILE_KEYS):
        return "StableDiffusionPipeline"
    return None


def _load_from_pretrained(name: str, variant: str | None, local_only: bool, sdxl: bool, bar=None,
                          dtypes: dict | None = None) -> SdComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kw = {"local_files_only": local_only}
    weights = {**kw, "variant": variant}
    dtypes = dtypes or {}
    steps = [
        ("tokenizer", CLIPTokenizer, kw), ("scheduler", DDPMScheduler, kw), ("text_encoder", CLIPTextModel, weights),
        ("vae", AutoencoderKL, weights), ("unet", UNet2DConditionModel, weights),
    ]
    if sdxl:
        steps += [("tokenizer_2", CLIPTokenizer, kw), ("text_encoder_2", CLIPTextModelWithProjection, weights)]
    loaded = {}
    for subfolder, cls, options in steps:
        if bar is not None:
            bar.set_postfix_str(subfolder)
        loaded[subfolder] = _load_part(cls, name, subfolder, options, local_only, dtypes.get(subfolder))
        if bar is not None:
            bar.update(1)
    return SdComponents(loaded["tokenizer"], loaded["text_encoder"], loaded["vae"], loaded["unet"], loaded["scheduler"],
                        source=name, tokenizer_2=loaded.get("tokenizer_2"), text_encoder_2=loaded.get("text_encoder_2"))


def _load_part(cls, name: str, subfolder: str, options: dict, local_only: bool, dtype=None):
    """One part of a diffusers folder, its weights read straight into `dtype` where given (never a whole
    copy in the stored dtype beside them); a missing or damaged part is named by its folder."""
    folder = Path(name).expanduser() / subfolder
    if local_only and not folder.is_dir():
        raise ModelLoadError(
            f"model {name}: has no {subfolder}/ folder; a diffusers model folder holds tokenizer/, text_encoder/, "
            "vae/, unet/ and scheduler/ (copy the whole folder, or point model at a single .safetensors file)"
        )
    try:
        if dtype is None:
            return cls.from_pretrained(name, subfolder=subfolder, **options)
        if local_only:
            from tiforge.model.dtype_loading import load_part_in_dtype

            model = load_part_in_dtype(cls, folder, dtype)
            if model is not None:
                return model
        # transformers 5 names the argument dtype (torch_dtype is deprecated there); diffusers, torch_dtype
        dtype_kw = "dtype" if cls.__module__.startswith("transformers") else "torch_dtype"
        return cls.from_pretrained(name, subfolder=subfolder, **{dtype_kw: dtype}, **options)
    except Exception as err:
        if not local_only:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"model {name}: cannot load {folder} ({first}); its files may be incomplete or damaged "
            "(an interrupted download or copy): copy that folder again"
        ) from err


def _load_single_file(path: Path, config_dir: str | None, sdxl: bool, dtypes: dict | None = None) -> SdComponents:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    _check_family(str(path), _single_file_class(path), sdxl)
    kw: dict[str, Any] = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    if config_dir is not None:
        if not Path(config_dir).is_dir():
            raise ModelLoadError(f"single_file_config {config_dir}: not a folder")
        _check_family(f"{path} (single_file_config {config_dir})", _pipeline_class_of_folder(Path(config_dir)), sdxl)
        kw.update(config=str(config_dir), local_files_only=True)
    pipeline_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    if dtypes and len(set(dtypes.values())) == 1:  # one dtype for the whole pipeline, converted as it loads
        kw["torch_dtype"] = next(iter(dtypes.values()))
    try:
        pipe = pipeline_class.from_single_file(str(path), **kw)
    except Exception as err:
        hint = (
            ""
            if config_dir
            else " Offline, diffusers cannot fetch the model's configs: set single_file_config to a local "
            "diffusers-format folder of the same architecture (configs and tokenizer are enough)."
        )
        raise ModelLoadError(f"model {path}: could not load the single-file checkpoint ({err}).{hint}") from err
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    parts = SdComponents(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler, source=str(path))
    if sdxl:
        parts.tokenizer_2, parts.text_encoder_2 = pipe.tokenizer_2, pipe.text_encoder_2
    return parts


def load_sd_components(model: str, hf_variant: str | None = None, single_file_config: str | None = None,
                       dtype=None, *, sdxl: bool = False, vae_model: str | None = None,
                       vae_dtype=None, progress: bool = False) -> SdComponents:
    """Tokenizer(s), text encoder(s), VAE, UNet and a DDPM scheduler, with weights in `dtype` (default
    float32; the VAE in `vae_dtype` where given): libraries disagree on whether stored fp16 weights
    load as fp16, so tiforge decides. `sdxl` says which family the caller trains; a model of the
    other family is refused. `vae_model` replaces the bundled VAE (e.g. an fp16-safe SDXL VAE)."""
    import torch
    from tqdm.auto import tqdm

    from tiforge.model import reuse

    key = (model, hf_variant, single_file_config, str(dtype), sdxl, vae_model, str(vae_dtype))
    kept = reuse.reused(key)  # a queue of runs (train-many) loads the model once
    if kept is not None:
        return kept
    total = (7 if sdxl else 5) + (vae_model is not None)
    with tqdm(total=total, desc="loading model", disable=not progress, dynamic_ncols=True) as bar:
        parts = _load(model, hf_variant, single_file_config, sdxl, bar, _part_dtypes(dtype, vae_dtype))
        if vae_model is not None:
            bar.set_postfix_str("vae_model")
            parts.vae = load_vae(vae_model, hf_variant, like=parts.vae)
            log.info("using the VAE from %s (vae_model) instead of the model's own", vae_model)
        bar.n = total
        bar.set_postfix_str("")
        bar.refresh()
    dtype = dtype or torch.float32
    for module in parts.frozen_modules:
        wanted = vae_dtype if module is parts.vae and vae_dtype is not None else dtype
        if module.dtype != wanted:
            module.to(dtype=wanted)
    return reuse.keep(key, parts)


def _single_file_vae(path: Path, like):
    """A VAE in one file (kohya's --vae): diffusers' key names, or the original LDM ones (a VAE file, or a
    whole model checkpoint's first_stage_model), on the architecture of the model's own VAE `like`."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as err:
        raise ModelLoadError(f"vae_model {path}: could not read it ({type(err).__name__}: {err})") from None
    if not any(k.startswith("encoder.down_blocks.") for k in state):
        state = convert_ldm_vae_checkpoint(state, like.config)
    vae = AutoencoderKL.from_config(like.config)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing:
        raise ModelLoadError(f"vae_model {path}: not a VAE for this model ({len(missing)} weights missing, e.g. "
                             f"{missing[0]})")
    return vae


def load_vae(name: str, hf_variant: str | None = None, like=None):
    """A separate VAE from a local diffusers folder (the VAE's own, or a model's `vae/`), a single file
    (with `like`, the model's own VAE, for its architecture) or a hub id."""
    from diffusers import AutoencoderKL

    path = Path(name).expanduser()
    if path.is_file() and like is not None and path.suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        return _single_file_vae(path, like)
    if path.is_dir():
        if (path / "config.json").is_file():
            return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        if (path / "vae" / "config.json").is_file():
            return AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True)
        raise ModelLoadError(f"vae_model {path}: a diffusers VAE folder needs config.json (or vae/config.json)")
    if path.is_file() or name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise ModelLoadError(
            f"vae_model {name}: expected a local diffusers VAE folder or a hub id such as "
            "madebyollin/sdxl-vae-fp16-fix, or a .safetensors/.ckpt/.pt/.bin file"
        )
    try:
        return AutoencoderKL.from_pretrained(name, variant=hf_variant)
    except Exception:
        try:
            return AutoencoderKL.from_pretrained(name)
        except Exception as err:
            raise ModelLoadError(f"vae_model {name}: could not load it from the hub ({type(err).__name__}: {err})") from err


def is_sdxl_model(model: str, single_file_config: str | None = None, online: bool = True) -> bool:
    """Whether `model` is an SDXL model, from its model_index.json or its file's key names; for tools
    that take any model (generate, inspect, the console UI) rather than a config's declared family."""
    path = Path(model).expanduser()
    cls = None
    if path.is_dir():
        cls = _pipeline_class_of_folder(path)
    elif path.is_file():
        cls = _single_file_class(path)
        if cls is None and single_file_config:
            cls = _pipeline_class_of_folder(Path(single_file_config))
    elif online:
        try:
            from huggingface_hub import hf_hub_download

            cls = _pipeline_class_of_folder(Path(hf_hub_download(model, "model_index.json")).parent)
        except Exception:
            cls = None  # loading will say what went wrong
    return bool(cls and "XL" in cls)


def _part_dtypes(dtype, vae_dtype) -> dict:
    """The dtype each part's weights load in; the VAE may have its own."""
    import torch

    dtype = dtype or torch.float32
    return {"text_encoder": dtype, "text_encoder_2": dtype, "unet": dtype, "vae": vae_dtype or dtype}


def _load(model: str, hf_variant: str | None, single_file_config: str | None, sdxl: bool, bar=None,
          dtypes: dict | None = None) -> SdComponents:
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"model {path}: expected a {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint file")
        if bar is not None:
            bar.set_postfix_str(path.name)  # one file: converted in one go
        return _load_single_file(path, single_file_config, sdxl, dtypes)
    if path.is_dir():
        cls = _pipeline_class_of_folder(path)
        if cls is None:
            raise _not_a_model_folder(path)
        _check_family(str(path), cls, sdxl)
        # A variant names hub files (e.g. *.fp16.safetensors); local folders are loaded as they are.
        parts = _load_from_pretrained(str(path), None, local_only=True, sdxl=sdxl, bar=bar, dtypes=dtypes)
        index = json.loads((path / "model_index.json").read_text())
        parts.force_zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))
        return parts
    check_hub_id(model)
    return _load_from_hub(model, hf_variant, sdxl, bar, dtypes)


def check_hub_id(model: str) -> None:
    """A reference that is no local file or folder must look like a hub id ('owner/name')."""
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise ModelLoadError(f"model {model}: no such file or folder, and not a hub id of the form 'owner/name'")


def check_model_reference(model: str) -> None:
    """What loading refuses before reading any weights (a folder that is no diffusers folder, a name
    that is neither a path nor a hub id), checked without loading; the hub itself is not asked."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise _not_a_model_folder(path)
    if not path.exists():
        check_hub_id(model)


def _not_a_model_folder(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"model {path}: a folder without model_index.json is not a diffusers model folder. "
        "Point model at the folder that holds model_index.json, or at a single .safetensors/.ckpt file."
    )


def _load_from_hub(repo_id: str, variant: str | None, sdxl: bool, bar=None, dtypes: dict | None = None) -> SdComponents:
    try:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(repo_id, "model_index.json"))
        _check_family(repo_id, _pipeline_class_of_folder(index.parent), sdxl)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"model {repo_id}: could not fetch it from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, download the model elsewhere and point model at the local folder or .safetensors file."
        ) from err
    try:
        return _load_from_pretrained(repo_id, variant, local_only=False, sdxl=sdxl, bar=bar, dtypes=dtypes)
    except (OSError, ValueError) as err:
        if variant is None or variant not in str(err):
            raise ModelLoadError(f"model {repo_id}: {err}") from err
        log.warning("model %s has no %r variant; loading its default weights", repo_id, variant)
        if bar is not None:
            bar.reset()
        return _load_from_pretrained(repo_id, None, local_only=False, sdxl=sdxl, bar=bar, dtypes=dtypes)
