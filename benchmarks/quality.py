"""tiforge's quality yardstick: how well an embedding learns a concept, and composes it with other words.

On the shipped toy model (as float32), each tool learns the purple star (a combination the model never
saw) from six pictures drawn with a seed nothing else in the project uses, with the issue's settings:
2 vectors, initializer "dog", lr 1e-2 constant, batch 6, fp32. One run per (tool, seed) to the largest
step budget saves the embedding at every budget; each file is loaded the way users load it (diffusers'
`load_textual_inversion`) and judged (tiforge.toy.world.judge, no neural network) over 16 generations
of each prompt, with the same noise for every embedding:

  identity     "a <tok>": the share of pictures showing a purple star;
  editability  the mean share over the compositions in benchmarks/_quality_judge.py: "a <tok> on a
               dark striped background" (the star and that background) and "a <tok> on a light
               checkered background" (the star and the checkering).

Given --diffusers-script, the diffusers example script runs the same command line on the same model and
pictures; --variant adds tiforge rows with config overrides (`--set` fields). Scores are the mean and
sample standard deviation over seeds (seed k: training seed k, pictures drawn with seed 41000 + k).
Step 0 is judged once: the initializer's vectors, where both tools start (a variant that starts
elsewhere, e.g. initialize_from_text_encoder_output, is judged from its first saved budget on).

    PYTHONPATH=src .venv/bin/python benchmarks/quality.py --quick                  # 1 seed, steps 0/60/120
    git --git-dir=<diffusers clone>/.git show HEAD:examples/textual_inversion/textual_inversion.py > /tmp/ti.py
    PYTHONPATH=src:<torchvision dir> .venv/bin/python benchmarks/quality.py --diffusers-script /tmp/ti.py
    ... --variant baseline= --variant norm="preserve_embedding_norm=true"        # methods as rows
    ... --table-from benchmarks/results/quality.json                              # reprint saved results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _quality_judge import COMPOSITIONS, IDENTITY, PROBES, count_objects, share  # noqa: E402
from _quality_runs import (INITIALIZER, NUM_VECTORS, TOKEN, diffusers_command, float32_toy_model,  # noqa: E402
                           parse_variant, saved_embeddings, shared_line, tiforge_command, write_pictures)
from _quality_table import DIFFUSERS, START, detailed, side_by_side  # noqa: E402

GENERATIONS = 16
GENERATION_SEED = 1234  # the same noise for every embedding, so scores differ only by the vectors
WORDS = "purple star"  # the model's own words for the concept: what composing can reach on this model


class Scorer:
    """One toy pipeline; judges embeddings loaded into it one at a time."""

    def __init__(self, model: Path):
        from tiforge.toy.model import load_toy_pipeline

        self.pipe = load_toy_pipeline(model)
        self.vocabulary = len(self.pipe.tokenizer)

    def pictures(self, prompt: str) -> list:
        from tiforge.toy.model import generate

        return generate(self.pipe, [prompt], per_prompt=GENERATIONS, seed=GENERATION_SEED)

    def scores(self, subject: str) -> dict[str, float]:
        out = {c.name: share(self.pictures(c.prompt(subject)), c) for c in (IDENTITY, *COMPOSITIONS)}
        out["editability"] = statistics.fmean(out[c.name] for c in COMPOSITIONS)
        return out

    def embedding(self, path: Path) -> dict[str, float]:
        from tiforge.embeddings.generate import load_embeddings_into

        load_embeddings_into(self.pipe, [str(path)], [TOKEN])
        try:
            return self.scores(TOKEN)
        finally:
            self.pipe.unload_textual_inversion()
            if len(self.pipe.tokenizer) != self.vocabulary:
                raise RuntimeError(f"unloading {path} left {len(self.pipe.tokenizer)} tokens, not {self.vocabulary}")

    def start_file(self, folder: Path) -> Path:
        """The vectors both tools start from: the initializer's row, once per vector."""
        from tiforge.embeddings.files import save_embedding

        ids = self.pipe.tokenizer.encode(INITIALIZER, add_special_tokens=False)
        row = self.pipe.text_encoder.get_input_embeddings().weight[ids[0]].detach()
        return save_embedding(folder / "start.safetensors", TOKEN, row.repeat(NUM_VECTORS, 1), warn_layout=False)

    def probes(self) -> dict[str, float]:
        """Share of pictures with two or more objects, for the two-object prompts in the model's own words."""
        return {name: sum(count_objects(im) >= 2 for im in self.pictures(t.format(WORDS))) / GENERATIONS
                for name, t in PROBES.items()}


def check_diffusers_script(script: Path) -> None:
    """The example script imports torchvision; say how to get it before any training starts."""
    if not script.is_file():
        raise SystemExit(f"--diffusers-script {script}: no such file")
    found = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('torchvision') is None)"], env=os.environ)
    if found.returncode:
        raise SystemExit("the diffusers script needs torchvision, which this Python cannot import: install the CPU "
                         "wheel matching torch beside it, e.g. `pip install --no-deps --target /tmp/tvdeps "
                         "torchvision==0.28.*`, and run with PYTHONPATH=src:/tmp/tvdeps")


def train_and_score(label: str, target: list[str], out: Path, steps: list[int], seed: int, scorer: Scorer,
                    work: Path) -> tuple[list[dict], dict]:
    """Run one trainer to the largest budget, then judge the embedding it saved at each budget."""
    from vs_diffusers import run_child

    slug = label.replace(" ", "-")
    started = time.perf_counter()
    timing = run_child(target, work / f"{slug}-{seed}.log")
    trained = time.perf_counter()
    records = [{"method": label, "seed": seed, "step": step, **scorer.embedding(path)}
               for step, path in saved_embeddings(out, steps).items()]
    shutil.rmtree(out, ignore_errors=True)
    times = {"method": label, "seed": seed, "train_s": trained - started, "step_s": timing["step_s"],
             "judge_s": time.perf_counter() - trained}
    return records, times


def methods(args) -> list[tuple[str, Callable[[list[str]], list[str]]]]:
    """(label, command line -> the child's target) for each method compared."""
    found = [(DIFFUSERS, partial(diffusers_command, args.diffusers_script))] if args.diffusers_script else []
    return found + [(f"tiforge {name}", partial(tiforge_command, overrides=overrides))
                    for name, overrides in args.variants]


def measure(args, work: Path) -> dict:
    from _step_timer import _torchvision_without_ops

    _torchvision_without_ops()  # a CUDA torchvision beside a CPU torch (see there): transformers may import it
    model = float32_toy_model()
    scorer = Scorer(model)
    result = {"steps": args.steps, "seeds": args.seeds, "compositions": [c.name for c in COMPOSITIONS],
              "variants": {name: overrides for name, overrides in args.variants}, "timings": [],
              "words": scorer.scores(WORDS), "probes": scorer.probes(),
              "records": [{"method": START, "seed": None, "step": 0, **scorer.embedding(scorer.start_file(work))}]}
    for seed in range(args.seeds):
        pictures = write_pictures(work / f"pictures-{seed}", seed)
        runs = methods(args)
        for label, command in runs if seed % 2 == 0 else runs[::-1]:  # who goes first alternates: drift hits all
            out = work / f"out-{label.replace(' ', '-')}-{seed}"
            target = command(shared_line(model, pictures, out, args.steps, seed))
            records, times = train_and_score(label, target, out, args.steps, seed, scorer, work)
            result["records"] += records
            result["timings"].append(times)
            print(f"seed {seed} {label}: trained in {times['train_s']:.0f} s ({times['step_s']:.3f} s/step), judged "
                  f"in {times['judge_s']:.0f} s; identity " + " ".join(f"{r['identity']:.2f}" for r in records)
                  + ", editability " + " ".join(f"{r['editability']:.2f}" for r in records), flush=True)
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
    return result


def merged(results: list[dict]) -> dict:
    """Several saved results as one (e.g. variants measured after the baseline): the first file's
    start, words and probes (the same in every file: one model, one generation seed), all the rows."""
    out = dict(results[0], records=list(results[0]["records"]), timings=list(results[0]["timings"]))
    for other in results[1:]:
        out["records"] += [r for r in other["records"] if r["method"] != START]
        out["timings"] += other["timings"]
        out["seeds"] = max(out["seeds"], other["seeds"])
    return out


def report(result: dict) -> str:
    records, compositions = result["records"], result["compositions"]
    labels = list(dict.fromkeys(r["method"] for r in records if r["method"] not in (START, DIFFUSERS)))
    parts = []
    if any(r["method"] == DIFFUSERS for r in records):
        for label in labels:
            parts.append(f"{label} against the {DIFFUSERS} (mean ± sd over {result['seeds']} seed(s)):\n\n"
                         + side_by_side(records, label))
    parts.append("Every method and composition:\n\n" + detailed(records, compositions))
    words = ", ".join(f"{k} {v:.2f}" for k, v in result["words"].items())
    probes = ", ".join(f"{k!r} {v:.2f}" for k, v in result["probes"].items())
    parts.append(f"The model's own words ({WORDS!r} in place of the token): {words}.\n"
                 f"Two-object prompts in words, share of pictures with two or more objects: {probes} "
                 "(not scored: the toy model draws one object per picture).")
    parts.append("\n".join(f"seed {t['seed']} {t['method']}: training {t['train_s']:.0f} s "
                            f"({t['step_s']:.3f} s/step), judging {t['judge_s']:.0f} s" for t in result["timings"]))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, steps 0/60/120")
    parser.add_argument("--steps", default="0,60,120,200,400", help="comma-separated step budgets")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--diffusers-script", type=Path, help="the diffusers example textual_inversion.py")
    parser.add_argument("--variant", "--method", action="append", default=[], metavar="NAME=OVERRIDES",
                        help='a tiforge row: NAME=KEY=VALUE ... (`--set` fields), e.g. baseline= or '
                             'norm="preserve_embedding_norm=true"; repeatable (default: baseline=)')
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/quality.json"),
                        help="results so far, rewritten after each run")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of saved --json files (several: their rows together) and exit")
    args = parser.parse_args()
    if args.table_from:
        print(report(merged([json.loads(p.read_text()) for p in args.table_from])))
        return
    try:
        args.variants = [parse_variant(v) for v in args.variant or ["baseline="]]
        args.steps = sorted({int(s) for s in args.steps.split(",")})
    except ValueError as err:
        parser.error(str(err))
    if args.quick:
        args.seeds, args.steps = 1, [0, 60, 120]
    if max(args.steps) < 2 or min(args.steps) < 0:
        parser.error("--steps: give step budgets of 2 or more (step 0, the start, is always judged), e.g. 0,60,120")
    if args.diffusers_script:
        check_diffusers_script(args.diffusers_script)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tiforge-quality-"))
    started = time.perf_counter()
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{report(result)}\n\nwall time {time.perf_counter() - started:.0f} s; results in {args.json}")


if __name__ == "__main__":
    main()
