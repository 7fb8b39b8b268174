"""Which optimizer learns the toy world's purple star fastest?

For each optimizer (at the learning rates below) it trains an embedding of the held-out concept
"purple star" on the shipped toy model (6 pictures, batch 6, 2 vectors from "dog", seed 0, constant
schedule) and reports the judge's hit rate (16 generations, see tiforge.toy.world.judge) at steps
60, 120 and 200, as benchmarks/quality.py does for AdamW.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optimizers.py            # ~15 minutes on a 2-core CPU
    .venv/bin/python benchmarks/optimizers.py --only Lion --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tiforge.config.loading import config_from_dict
from tiforge.toy.model import hit_rate, pipeline_with_embedding, toy_model_dir, write_concept_images
from tiforge.training.recipe import train

CONCEPT, TOKEN, PROMPT = "purple-star", "<purple-star>", "a <purple-star>"
CHECKPOINTS = (60, 120, 200)
# (label, optimizer section); the learning rates are each optimizer's usual range for embeddings
RUNS = [  # one run per optimizer first, then other learning rates
    ("AdamW lr 1e-2", {"optimizer_type": "AdamW", "learning_rate": 1e-2}),
    ("Lion lr 1e-3", {"optimizer_type": "Lion", "learning_rate": 1e-3}),
    ("Prodigy lr 1.0", {"optimizer_type": "Prodigy", "learning_rate": 1.0}),
    ("AdaFactor (own rate)", {"optimizer_type": "AdaFactor"}),
    ("AdamWScheduleFree lr 1e-2", {"optimizer_type": "AdamWScheduleFree", "learning_rate": 1e-2}),
    ("Lion lr 3e-3", {"optimizer_type": "Lion", "learning_rate": 3e-3}),
    ("AdamWScheduleFree lr 3e-2", {"optimizer_type": "AdamWScheduleFree", "learning_rate": 3e-2}),
    ("AdaFactor lr 1e-2 fixed", {"optimizer_type": "AdaFactor", "learning_rate": 1e-2,
                                 "optimizer_args": {"relative_step": False, "scale_parameter": False}}),
    ("AdamW lr 5e-3", {"optimizer_type": "AdamW", "learning_rate": 5e-3}),
]


def run(optimizer: dict, seed: int, data: Path) -> dict[int, float]:
    cfg = config_from_dict({
        "seed": seed, "base_output_dir": tempfile.mkdtemp(), "report_to": "none", "model": str(toy_model_dir()),
        "placeholder_token": TOKEN, "initializer_token": "dog", "num_vectors": 2,
        "max_train_steps": CHECKPOINTS[-1], "save_embedding_every_n_steps": CHECKPOINTS[0],
        "train_batch_size": 6, "cache_vae_outputs": True, "optimizer": optimizer, "lr_scheduler": "constant",
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)}, "resolution": 32,
                        "caption_templates": ["a {}"]},
    })
    result = train(cfg, progress=False)
    snapshots = {int(p.stem.rsplit("step", 1)[-1]): p for p in (result.run_dir / "embeddings").glob("*-step*")}
    snapshots[CHECKPOINTS[-1]] = result.embedding_path
    return {step: hit_rate(pipeline_with_embedding(snapshots[step], TOKEN), CONCEPT, PROMPT)[0]
            for step in CHECKPOINTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", help="optimizer names to run (default: all)")
    args = parser.parse_args()
    data = write_concept_images(CONCEPT, Path(tempfile.mkdtemp()) / CONCEPT, n=6, seed=0)
    runs = [r for r in RUNS if not args.only or r[1]["optimizer_type"] in args.only]
    print(f"{'optimizer':<27} {'seed':>4} " + " ".join(f"{f'step {s}':>9}" for s in CHECKPOINTS) + f" {'time':>6}")
    for label, optimizer in runs:
        for seed in args.seeds:
            start = time.time()
            rates = run(optimizer, seed, data)
            print(f"{label:<27} {seed:>4} " + " ".join(f"{rates[s]:>9.2f}" for s in CHECKPOINTS)
                  + f" {time.time() - start:>5.0f}s", flush=True)
    print("hit rate: fraction of 16 generations of 'a <purple-star>' the judge finds a purple star in",
          file=sys.stderr)


if __name__ == "__main__":
    main()
