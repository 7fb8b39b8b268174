"""The pretrained toy models: tiny Stable-Diffusion-architecture pipelines that understand the toy
world (tiforge.toy.world), and the measurements made with them.

Two twins: "sd" (one text encoder) and "sdxl" (the SDXL architecture: clip_l + clip_g, pooled and
size/crop conditioning, sharing the SD twin's VAE). Their weights ship with tiforge
(assets/toy_model, assets/toy_model_sdxl; fp16; made by scripts/train_toy_model.py); the CLIP
tokenizers are added when a model is first used, from the same offline vocabulary as everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from tiforge.model.clip_tokenizer import cache_dir, load_clip_tokenizer
from tiforge.toy.world import COLOURS, HELD_OUT_OBJECT, HELD_OUT_STYLE, SHAPES, SIZE, Verdict, judge

TEXT_WIDTH = 64
SDXL_TIME_EMBED = 8
FAMILIES = {"sd": "toy_model", "sdxl": "toy_model_sdxl"}


def _toy_unet(**family):
    """The toy UNet both twins share; `family` holds what differs (text width, SDXL's extras)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=16,
        **family,
    )


def build_toy_components(seed: int = 0):
    """Untrained VAE, UNet, text encoder and DDPM scheduler of the toy architecture."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=SIZE,
    )
    unet = _toy_unet(cross_attention_dim=TEXT_WIDTH)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False)
    return vae, unet, text_encoder, scheduler


def build_toy_sdxl_components(vae, sd_text_encoder, seed: int = 0):
    """The SDXL twin, untrained but for what it shares: the SD twin's VAE, and its text encoder as
    the starting point of both clip_l and clip_g (clip_g gets a fresh pooled projection)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = _toy_unet(
        cross_attention_dim=2 * TEXT_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED + TEXT_WIDTH,
    )
    clip_l = CLIPTextModel(sd_text_encoder.config)
    clip_l.load_state_dict(sd_text_encoder.state_dict())
    config_g = sd_text_encoder.config.__class__(**{**sd_text_encoder.config.to_dict(), "hidden_act": "gelu",
                                                   "pad_token_id": 0})
    clip_g = CLIPTextModelWithProjection(config_g)
    clip_g.text_model.load_state_dict({k.removeprefix("text_model."): v for k, v in sd_text_encoder.state_dict().items()})
    return vae, unet, clip_l, clip_g


def _pipeline(vae, unet, text_encoder, tokenizer, scheduler, text_encoder_2=None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if text_encoder_2 is not None:
        # The twin learned its unconditional prediction from empty captions, not from zeros.
        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=load_clip_tokenizer(pad_token="!"), unet=unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_toy_model(path: Path, vae, unet, text_encoder, scheduler, text_encoder_2=None) -> None:
    """fp16 weights and configs; no tokenizers (they are rebuilt offline when the model is used)."""
    pipe = _pipeline(vae, unet, text_encoder, load_clip_tokenizer(), scheduler, text_encoder_2)
    pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
    pipe.to(torch.float32)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(Path(path) / name, ignore_errors=True)
    for config in Path(path).glob("*/config.json"):
        # parts loaded from a folder (a fine-tune) remember its absolute path: not for a shipped model
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def shipped_weights(family: str = "sd") -> Path:
    return Path(str(resources.files("tiforge") / "assets" / FAMILIES[family]))


def _add_tokenizers(folder: Path) -> None:
    load_clip_tokenizer().save_pretrained(folder / "tokenizer")
    if (folder / "text_encoder_2").is_dir():
        load_clip_tokenizer(pad_token="!").save_pretrained(folder / "tokenizer_2")


def toy_model_dir(family: str = "sd") -> Path:
    """A complete diffusers folder of a toy twin (weights plus tokenizers), kept in the cache."""
    src = shipped_weights(family)
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src}: the toy model weights are missing; run scripts/train_toy_model.py")
    digest = hashlib.sha256()
    for f in sorted(src.rglob("*.safetensors")):
        digest.update(f.read_bytes())
    target = cache_dir() / f"toy-model-{digest.hexdigest()[:12]}"
    if not (target / "tokenizer").is_dir():
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("report.json", "train.log"))
        _add_tokenizers(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def load_toy_pipeline(model_dir: Path | None = None):
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    folder = model_dir or toy_model_dir()
    extra = {} if (Path(folder) / "text_encoder_2").is_dir() else {"safety_checker": None}
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True, **extra)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], per_prompt: int = 1, seed: int = 0, steps: int = 20, guidance: float = 4.0,
             prompt_embeds: torch.Tensor | None = None, negative_embeds: torch.Tensor | None = None):
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(num_images_per_prompt=per_prompt, num_inference_steps=steps, guidance_scale=guidance,
                  height=SIZE, width=SIZE, generator=generator)
    if prompt_embeds is not None:
        return pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, **kwargs).images
    return pipe(prompts, **kwargs).images


@dataclass
class Tally:
    hits: int = 0
    total: int = 0

    @property
    def rate(self) -> float:
        return self.hits / max(1, self.total)


def evaluate_prompts(model_dir: Path, per_prompt: int = 2, seed: int = 0) -> dict:
    """How well the model draws what it is told: judge accuracy for shape, colour and background."""
    pipe = load_toy_pipeline(_with_tokenizer(model_dir))
    shape, colour, background = Tally(), Tally(), Tally()
    cases = [(s, c, "grey") for s in SHAPES for c in COLOURS if (c, s) != HELD_OUT_OBJECT]
    cases += [(s, "red", b) for s in SHAPES for b in ("dark", "light", "dark striped", "grey checkered")]
    prompts = [f"a {c} {s} on a {b} background" for s, c, b in cases]
    images = generate(pipe, prompts, per_prompt=per_prompt, seed=seed)
    for i, image in enumerate(images):
        s, c, b = cases[i // per_prompt]
        v: Verdict = judge(image)
        for tally, ok in ((shape, v.shape == s), (colour, v.colour == c), (background, v.background == b)):
            tally.total += 1
            tally.hits += int(ok)
    return {"images": len(images), "shape_accuracy": round(shape.rate, 3), "colour_accuracy": round(colour.rate, 3),
            "background_accuracy": round(background.rate, 3)}


def _with_tokenizer(model_dir: Path) -> Path:
    """A copy of `model_dir` with the tokenizer added, leaving the folder itself as it is."""
    import tempfile

    copy = Path(tempfile.mkdtemp()) / "toy"
    shutil.copytree(model_dir, copy)
    _add_tokenizers(copy)
    return copy


# ------------------------------------------------------------------ measuring a learned concept


# The two concepts the toy model never saw, and how a picture shows them.
CONCEPTS = {
    "purple-star": "the object purple star (purple things and other stars were seen, never a purple star)",
    "light-checkered": "the style light checkered background (never seen; light and checkered were, apart)",
}


def concept_scenes(concept: str, n: int, seed: int):
    import numpy as np

    from tiforge.toy.world import sample_scene

    rng = np.random.default_rng(seed)
    if concept == "purple-star":
        colour, shape = HELD_OUT_OBJECT
        return [sample_scene(rng, shape=shape, colour=colour, pretraining=False) for _ in range(n)]
    if concept == "light-checkered":
        brightness, texture = HELD_OUT_STYLE
        return [sample_scene(rng, brightness=brightness, texture=texture, pretraining=False) for _ in range(n)]
    raise ValueError(f"unknown held-out concept {concept!r}; choose one of {', '.join(CONCEPTS)}")


def write_concept_images(concept: str, folder: Path, n: int = 6, seed: int = 0) -> Path:
    from tiforge.toy.world import render

    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(concept_scenes(concept, n, seed)):
        render(scene).save(folder / f"{concept}_{i:02d}.png")
    return folder


def is_hit(concept: str, verdict: Verdict) -> bool:
    """Purple star: colour and shape both. Light checkered: the checkered texture; its brightness is
    not required, because even the model's own words ("on a light checkered background") reach
    light about one time in three: the toy model composes brightness with checkering poorly."""
    if concept == "purple-star":
        return (verdict.colour, verdict.shape) == HELD_OUT_OBJECT
    return verdict.texture == HELD_OUT_STYLE[1]


def hit_rate(pipe, concept: str, prompt: str, n: int = 16, seed: int = 1234) -> tuple[float, list]:
    """Fraction of `n` generations the judge finds the concept in, and the images."""
    images = generate(pipe, [prompt], per_prompt=n, seed=seed)
    return sum(is_hit(concept, judge(im)) for im in images) / n, images


def pipeline_with_embedding(embedding_path: Path, token: str, model_dir: Path | None = None):
    """The toy pipeline with an embedding loaded the way users load one: diffusers' loader (SDXL:
    once per text encoder)."""
    from tiforge.embeddings.generate import load_embeddings_into

    pipe = load_toy_pipeline(model_dir)
    load_embeddings_into(pipe, [str(embedding_path)], [token])
    return pipe
