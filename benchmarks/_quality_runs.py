"""Training runs for the quality yardstick: one child process per (tool, seed), to the largest step
budget, each saving its embedding at every step budget; both tools get the same command line (the
one a diffusers user writes) on the same float32 toy model and the same pictures."""

from __future__ import annotations

import json
import math
import shutil
import sys
from functools import reduce
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TOKEN = "<tok>"
INITIALIZER = "dog"
NUM_VECTORS = 2
LEARNING_RATE = 1e-2
BATCH = 6
PICTURES = 6
# The training pictures of seed k are drawn with PICTURE_SEED + k: a seed no test, demo or other
# benchmark uses, so the pictures are unseen by everything else in the project.
PICTURE_SEED = 41_000


def float32_toy_model() -> Path:
    """The shipped toy model (stored in fp16) as float32 weights and configs, kept in the cache.

    Both tools train in float32 from it. The copy matters for the diffusers script: transformers 5
    loads a text encoder in the dtype its config names, and AdamW on fp16 vectors (eps 1e-8 is 0 in
    fp16) turns the loss to NaN from the second step."""
    from safetensors.torch import load_file, save_file

    from tiforge.model.clip_tokenizer import cache_dir
    from tiforge.toy.model import toy_model_dir

    source = toy_model_dir()
    target = cache_dir() / "bench" / f"{source.name}-fp32"
    if (target / "model_index.json").is_file():
        return target
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    for weights in tmp.rglob("*.safetensors"):
        save_file({k: v.float() for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    for config in tmp.rglob("config.json"):
        data = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):
            if data.get(key) == "float16":
                data[key] = "float32"
        config.write_text(json.dumps(data, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def write_pictures(folder: Path, seed: int) -> Path:
    from tiforge.toy.model import write_concept_images

    return write_concept_images("purple-star", folder, n=PICTURES, seed=PICTURE_SEED + seed)


def save_every(steps: list[int]) -> int:
    """One save interval that lands on every step budget."""
    return reduce(math.gcd, [s for s in steps if s > 0])


def shared_line(model: Path, pictures: Path, out: Path, steps: list[int], seed: int) -> list[str]:
    """The issue's settings as a diffusers user writes them; both tools take this line as it is.
    No accelerate checkpoints (--checkpointing_steps past the end): only the embeddings are judged."""
    last = max(steps)
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(pictures),
            "--learnable_property", "object", "--placeholder_token", TOKEN, "--initializer_token", INITIALIZER,
            "--num_vectors", str(NUM_VECTORS), "--resolution", "32", "--train_batch_size", str(BATCH),
            "--learning_rate", str(LEARNING_RATE), "--lr_scheduler", "constant", "--max_train_steps", str(last),
            "--save_steps", str(save_every(steps)), "--checkpointing_steps", str(10 * last),
            "--dataloader_num_workers", "0", "--mixed_precision", "no", "--seed", str(seed),
            "--output_dir", str(out)]


def diffusers_command(script: Path, line: list[str]) -> list[str]:
    return ["script", str(script), *line]


def tiforge_command(line: list[str], overrides: list[str]) -> list[str]:
    """tiforge on the shared line with the variant's `--set` overrides. Flags outrank `--set` in
    tiforge, so a flag of the line that an override names (by its last dotted name, as flags name
    config fields) leaves the line: the variant's value is the one trained with."""
    named = {o.split("=", 1)[0].rsplit(".", 1)[-1] for o in overrides}
    pairs = [(flag, value) for flag, value in zip(line[::2], line[1::2]) if flag.removeprefix("--") not in named]
    sets = [arg for override in overrides for arg in ("--set", override)]
    return ["tiforge", "train", "-q", *(arg for pair in pairs for arg in pair), *sets]


def saved_embeddings(out: Path, steps: list[int]) -> dict[int, Path]:
    """Step budget -> the embedding file written at that step (both tools name them alike)."""
    found = {}
    for step in steps:
        if step == 0:
            continue
        path = out / f"learned_embeds-steps-{step}.safetensors"
        if step == max(steps) and not path.is_file():
            path = out / "learned_embeds.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{out}: no embedding saved at step {step} (files: "
                                    f"{', '.join(sorted(p.name for p in out.glob('*.safetensors')))})")
        found[step] = path
    return found


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"NAME=KEY=VALUE KEY2=VALUE2" -> (NAME, ["KEY=VALUE", "KEY2=VALUE2"]); "NAME=" is tiforge as it is."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--variant {text!r}: write NAME=OVERRIDES, e.g. norm=\"preserve_embedding_norm=true\" "
                         "or baseline=")
    overrides = rest.split()
    bad = [o for o in overrides if "=" not in o.strip("=")]
    if bad:
        raise ValueError(f"--variant {name}: {', '.join(bad)} is not KEY=VALUE (a config field, as `--set` takes it)")
    return name.strip(), overrides
