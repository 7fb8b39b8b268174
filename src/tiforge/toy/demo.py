"""`tiforge demo`: teach the pretrained toy model a word for something it has never seen - a purple
star - from six pictures, then check with the judge that the word works. Offline, about a minute.

The toy model (tiforge.toy.model) is a tiny Stable-Diffusion-architecture pipeline trained on a
world of coloured shapes in which purple things and stars abound but no purple star ever appears.
The judge (tiforge.toy.world.judge) reads shape and colour off a picture without any neural network,
so "did it learn?" is a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import save_embedding
from tiforge.toy.model import hit_rate, load_toy_pipeline, pipeline_with_embedding, toy_model_dir
from tiforge.training.recipe import TrainResult, train
from tiforge.training.validation import image_grid

CONCEPT = "purple-star"
TOKEN = "<purple-star>"
PROMPT = f"a {TOKEN}"
INITIALIZER = "dog"  # deliberately unrelated: everything the token knows, it learns from the pictures


@dataclass
class DemoResult:
    train: TrainResult
    hit_rate_before: float  # judge's fraction of purple-star pictures with the initializer's vector
    hit_rate_after: float  # ... with the learned embedding


def demo_images_dir() -> Path:
    return Path(str(resources.files("tiforge") / "assets" / "demo_images"))


def demo_config(output_dir: str, steps: int = 300) -> dict:
    return {
        "type": "SD_TEXTUAL_INVERSION",
        "seed": 0,
        "base_output_dir": output_dir,
        "report_to": "tensorboard",
        "model": str(toy_model_dir()),
        "placeholder_token": TOKEN,
        "initializer_token": INITIALIZER,
        "num_vectors": 2,
        "max_train_steps": steps,
        "save_every_n_steps": max(1, steps // 4),
        "max_checkpoints": 4,
        "validate_every_n_steps": max(1, steps // 2),
        "validation_prompts": [PROMPT, f"a {TOKEN} on a dark striped background"],
        "num_validation_images_per_prompt": 4,
        "num_validation_inference_steps": 20,
        "validation_guidance_scale": 4.0,
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-2},
        "train_batch_size": 6,
        "cache_vae_outputs": True,
        "data_loader": {
            "type": "TEXTUAL_INVERSION_SD_DATA_LOADER",
            "dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(demo_images_dir())},
            "caption_templates": ["a {}"],
            "resolution": 32,
        },
    }


def _judged(pipe, out_dir: Path, n: int = 16) -> float:
    rate, images = hit_rate(pipe, CONCEPT, PROMPT, n=n)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(out_dir / f"{i:02d}.png")
    image_grid(images, rows=2).resize((8 * 96, 2 * 96)).save(out_dir / "grid.png")
    return rate


def run_demo(output_dir: str = "tiforge-demo", steps: int = 300, progress: bool = True, listener=None) -> DemoResult:
    model = toy_model_dir()
    print(f"tiforge demo: pretrained toy model {model}")
    print("  (a tiny SD-architecture model that knows coloured circles, squares, triangles and stars")
    print("   on plain and textured backgrounds - but has never seen a purple star)")
    print(f"  training pictures: {demo_images_dir()} (6 purple stars, 32x32)")
    config = config_from_dict(demo_config(output_dir, steps), "demo config")

    # Before: the placeholder holds the initializer's vector.
    plain = load_toy_pipeline(model)
    ids = plain.tokenizer.encode(INITIALIZER, add_special_tokens=False) * 2
    start = plain.text_encoder.get_input_embeddings().weight[ids].detach()
    result = train(config, progress=progress, listener=listener)
    initial = result.run_dir / "judged" / "initial.safetensors"
    save_embedding(initial, TOKEN, start, format="kohya")  # the layout training writes
    before = _judged(pipeline_with_embedding(initial, TOKEN, model), result.run_dir / "judged" / "before")
    after = _judged(pipeline_with_embedding(result.embedding_path, TOKEN, model), result.run_dir / "judged" / "after")

    print()
    print(f"Done: {result.global_step} steps, final loss {result.final_loss:.4f}")
    print(f"  judge, prompt {PROMPT!r}, 16 pictures each:")
    print(f"    before training: {before:.0%} show a purple star   ({result.run_dir / 'judged' / 'before' / 'grid.png'})")
    print(f"    after training:  {after:.0%} show a purple star   ({result.run_dir / 'judged' / 'after' / 'grid.png'})")
    print(f"  embedding:         {result.embedding_path}")
    print(f"  validation images: {result.validation_dirs[-1] / 'grid.png'}")
    print(f"  checkpoints:       {result.run_dir / 'checkpoints'}")
    print(f"  config used:       {result.run_dir / 'config.yaml'}  (rerun: tiforge train {result.run_dir / 'config.yaml'})")
    print(f"  logs:              {result.run_dir / 'logs'} (tensorboard --logdir {result.run_dir / 'logs'})")
    print()
    print("With a real model:  tiforge config --example > my.yaml   # edit model, data, placeholder")
    print("                    tiforge train my.yaml")
    return DemoResult(result, before, after)
