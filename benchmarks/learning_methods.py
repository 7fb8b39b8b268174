"""A quick look at issue 20's learning methods on the toy purple star (not the yardstick: that is
benchmarks/quality.py). Each method trains the held-out purple star (six pictures, 2 vectors from
"dog", lr 1e-2, batch 6) and, at a few steps, is judged over 16 generations each of
  identity:     "a <tok>"                            -> a purple star
  editability:  "a <tok> on a dark striped background" -> a purple star AND that background
Every embedding is loaded with diffusers' loader, as users load one.

The toy text encoder only ever trained the rows of its world's few words; the other ~49,000 rows of
its vocabulary keep their random start (norm ~0.16, where its words have 0.22-0.40), so the norm
rules' vocabulary statistics are far below its words' on the toy, unlike on a real CLIP, whose every
row was trained. Methods named `...@words` take the statistics over the toy's words instead.

    .venv/bin/python benchmarks/learning_methods.py --steps 200 --every 60 [--seeds 0 1] [--methods plain ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tiforge.config.loading import config_from_dict
from tiforge.toy.model import is_hit, generate, pipeline_with_embedding, toy_model_dir, write_concept_images
from tiforge.toy.world import judge
from tiforge.training.recipe import train

ADAMW = {"optimizer_type": "AdamW", "learning_rate": 1e-2}
METHODS: dict[str, dict] = {
    "plain": {},
    "preserve_norm": {"preserve_embedding_norm": True},
    "norm_penalty": {"embedding_norm_penalty": 0.1},
    "directional": {"directional_update": True},
    "decay_to_init": {"decay_toward_initializer": True, "optimizer": {**ADAMW, "weight_decay": 1.0}},
    "cross_init": {"initialize_from_text_encoder_output": True},
    "logit_normal": {"timestep_sampling": "logit_normal"},
}
METHODS.update({f"{name}@words": METHODS[name] for name in ("preserve_norm", "norm_penalty", "directional")})
# The encoder's output is ~50x a word's norm on the toy (7.6 against 0.15-0.40): its direction, at a word's norm
METHODS["cross_init+preserve_norm@words"] = {**METHODS["cross_init"], **METHODS["preserve_norm"]}
METHODS["cross_init+directional@words"] = {**METHODS["cross_init"], **METHODS["directional"]}
TOKEN = "<purple-star>"
TOY_WORDS = "a small large on background red yellow green cyan blue purple circle square triangle star dark grey " \
            "light plain striped checkered"


def use_toy_word_norms(model: Path, on: bool) -> None:
    """Make the vector rules read the norm statistics of the toy's own words (see above)."""
    from transformers import CLIPTokenizer

    from tiforge.training import vector_rules

    original = vector_rules.VocabularyNorms.__dict__["of_table"].__func__
    if not hasattr(vector_rules.VocabularyNorms, "_all_rows"):
        vector_rules.VocabularyNorms._all_rows = classmethod(original)
    if not on:
        vector_rules.VocabularyNorms.of_table = vector_rules.VocabularyNorms._all_rows
        return
    ids = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer").encode(TOY_WORDS, add_special_tokens=False)
    all_rows = vector_rules.VocabularyNorms._all_rows
    vector_rules.VocabularyNorms.of_table = classmethod(lambda cls, table: all_rows(table[ids]))


def scores(path: Path, model: Path) -> tuple[float, float]:
    pipe = pipeline_with_embedding(path, TOKEN, model)
    alone = generate(pipe, [f"a {TOKEN}"], per_prompt=16, seed=1234)
    composed = generate(pipe, [f"a {TOKEN} on a dark striped background"], per_prompt=16, seed=1234)
    identity = sum(is_hit("purple-star", judge(im)) for im in alone) / 16
    edit = sum(is_hit("purple-star", v) and v.background == "dark striped" for v in map(judge, composed)) / 16
    return identity, edit


def run(method: str, seed: int, steps: int, every: int, data: Path, model: Path) -> list[tuple]:
    cfg = {"seed": seed, "base_output_dir": tempfile.mkdtemp(), "report_to": "none", "model": str(model),
           "placeholder_token": TOKEN, "initializer_token": "dog", "num_vectors": 2, "max_train_steps": steps,
           "save_every_n_steps": every, "train_batch_size": 6, "cache_vae_outputs": True, "optimizer": ADAMW,
           "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)}, "resolution": 32,
                           "caption_preset": "object"}}
    use_toy_word_norms(model, method.endswith("@words"))  # before the run builds its rules
    started = time.perf_counter()
    result = train(config_from_dict({**cfg, **METHODS[method]}), progress=False)
    seconds = time.perf_counter() - started
    saved = [(int(p.name.split("_")[-1]), p / result.embedding_path.name)
             for p in sorted((result.run_dir / "checkpoints").iterdir())] + [(steps, result.embedding_path)]
    return [(method, seed, step, *scores(path, model), seconds) for step, path in saved]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    model = toy_model_dir()
    data = write_concept_images("purple-star", Path(tempfile.mkdtemp()) / "star", n=6, seed=7)
    print(f"{'method':<14} {'seed':>4} {'step':>5} {'identity':>8} {'edit':>5} {'train s':>7}", flush=True)
    for method in args.methods:
        for seed in args.seeds:
            print(f"training {method} seed {seed} ...", file=sys.stderr, flush=True)
            for row in run(method, seed, args.steps, args.every, data, model):
                print(f"{row[0]:<14} {row[1]:>4} {row[2]:>5} {row[3]:>8.2f} {row[4]:>5.2f} {row[5]:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
