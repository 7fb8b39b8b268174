"""tiforge's quality yardstick: does an embedding learn its concept on the pretrained toy model?

For a few learning rates, vector counts and initializers it trains an embedding for a concept the
toy model has never seen (the object "purple star"; the style "light checkered background", with
the style templates) and, at every checkpoint, measures
  * the hit rate: the fraction of 16 generations in which the judge (tiforge.toy.world.judge, no
    neural network) finds the concept, prompting with the learned token;
  * the held-out denoising loss: the training loss on 16 other pictures of the concept with fixed
    noise and timesteps (lower = the token explains the concept better).
Prints a table and writes a picture grid per run (rows: checkpoints, columns: generations).

    .venv/bin/python benchmarks/quality.py                # about 5 minutes on a 2-core CPU
    .venv/bin/python benchmarks/quality.py --quick        # one run per concept
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import load_embedding
from tiforge.model.loss import denoising_loss
from tiforge.model.loading import load_sd_components
from tiforge.model.placeholders import add_placeholder, install_placeholder_embedding
from tiforge.toy.model import concept_scenes, hit_rate, pipeline_with_embedding, toy_model_dir, write_concept_images
from tiforge.toy.world import render
from tiforge.training.recipe import train
from tiforge.training.validation import image_grid

PROMPTS = {"purple-star": ("a {}", ["a {}"]), "light-checkered": ("a painting in the style of {}", None)}


class HeldOutLoss:
    """Denoising loss of the concept's unseen pictures, for any vectors of the placeholder."""

    def __init__(self, model_dir: Path, concept: str, token: str, num_vectors: int, n: int = 16):
        self.parts = load_sd_components(str(model_dir))
        ph = add_placeholder(self.parts.tokenizer, token, num_vectors)
        dim = self.parts.text_width
        self.embedding = install_placeholder_embedding(self.parts.text_encoder, ph, torch.zeros(num_vectors, dim))
        scenes = concept_scenes(concept, n, seed=999)  # never the training pictures (seed 0)
        pixels = torch.stack([torch.from_numpy(__import__("numpy").asarray(render(s))).permute(2, 0, 1) for s in scenes])
        with torch.no_grad():
            dist = self.parts.vae.encode(pixels.float() / 127.5 - 1).latent_dist
            self.latents = dist.mean * self.parts.vae.config.scaling_factor
        prompt = PROMPTS[concept][0].format(token)
        self.ids = self.parts.tokenizer([ph.expand(prompt)] * n, padding="max_length", max_length=77,
                                        return_tensors="pt").input_ids
        g = torch.Generator().manual_seed(0)
        self.noise = torch.randn(self.latents.shape, generator=g)
        self.timesteps = torch.linspace(50, 950, n).long()

    @torch.no_grad()
    def __call__(self, vectors: torch.Tensor) -> float:
        self.embedding.vectors.data.copy_(vectors)
        hidden = self.parts.text_encoder(self.ids)[0]
        return denoising_loss(self.parts.unet, self.parts.noise_scheduler, self.latents, hidden,
                              prediction_type="epsilon", min_snr_gamma=None, noise=self.noise,
                              timesteps=self.timesteps).item()


def run(concept: str, lr: float, vectors: int, init: str, steps: int, every: int, out: Path) -> list[dict]:
    model = toy_model_dir()
    token = f"<{concept}>"
    data = write_concept_images(concept, Path(tempfile.mkdtemp()) / concept, n=6, seed=0)
    templates = PROMPTS[concept][1]
    cfg = config_from_dict({
        "seed": 0, "base_output_dir": tempfile.mkdtemp(), "report_to": "none", "model": str(model),
        "placeholder_token": token, "initializer_token": init, "num_vectors": vectors,
        "max_train_steps": steps, "save_every_n_steps": every, "train_batch_size": 6, "cache_vae_outputs": True,
        "optimizer": {"learning_rate": lr}, "lr_scheduler": "constant",
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)}, "resolution": 32,
                        **({"caption_templates": templates} if templates else {"caption_preset": "style"})},
    })
    result = train(cfg, progress=False)
    checkpoints = [(0, None)] + [(int(p.name.split("_")[-1]), p / result.embedding_path.name)
                                 for p in sorted((result.run_dir / "checkpoints").iterdir())]
    checkpoints.append((steps, result.embedding_path))
    held_out = HeldOutLoss(model, concept, token, vectors)
    prompt = PROMPTS[concept][0].format(token)
    rows, grid_rows = [], []
    for step, path in checkpoints:
        if path is None:  # step 0: the initializer's vectors
            parts = held_out.parts
            ids = parts.tokenizer.encode(init, add_special_tokens=False)
            vec = parts.text_encoder.get_input_embeddings().base.weight[ids[0]].detach().float().repeat(vectors, 1)
            path = Path(tempfile.mkdtemp()) / "init.safetensors"
            from tiforge.embeddings.files import save_embedding

            save_embedding(path, token, vec)
        vec = load_embedding(path).single
        rate, images = hit_rate(pipeline_with_embedding(path, token, model), concept, prompt)
        rows.append({"concept": concept, "lr": lr, "vectors": vectors, "init": init, "step": step,
                     "hit_rate": rate, "held_out_loss": held_out(vec)})
        grid_rows.append(images[:8])
    name = f"quality_{concept}_lr{lr:g}_v{vectors}_{init}.png"
    grid = image_grid([im.resize((64, 64), Image.Resampling.NEAREST) for row in grid_rows for im in row],
                      rows=len(grid_rows))
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    runs = [("purple-star", 1e-2, 2, "dog"), ("light-checkered", 1e-2, 2, "dog")]
    if not args.quick:
        runs += [("purple-star", 3e-3, 2, "dog"), ("purple-star", 3e-2, 2, "dog"), ("purple-star", 1e-2, 1, "dog"),
                 ("purple-star", 1e-2, 4, "dog"), ("purple-star", 1e-2, 2, "star")]
    rows = []
    for r in runs:
        print(f"training {r} ...", file=sys.stderr, flush=True)
        rows += run(*r, steps=args.steps, every=args.every, out=args.out)
    print(f"\n{'concept':<10} {'lr':>7} {'vec':>3} {'init':<7} {'step':>5} {'hit rate':>8} {'held-out loss':>13}")
    for r in rows:
        print(f"{r['concept']:<10} {r['lr']:>7g} {r['vectors']:>3} {r['init']:<7} {r['step']:>5} "
              f"{r['hit_rate']:>8.2f} {r['held_out_loss']:>13.4f}")
    print(f"\npicture grids (rows = checkpoints from step 0): {args.out}/quality_*.png")


if __name__ == "__main__":
    main()
