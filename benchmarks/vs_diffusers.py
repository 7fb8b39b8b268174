"""tiforge against the diffusers example script, side by side, given the same command line.

    git --git-dir=<diffusers clone>/.git show HEAD:examples/textual_inversion/textual_inversion.py > /tmp/ti.py
    python benchmarks/vs_diffusers.py --diffusers-script /tmp/ti.py                       # tiny and SD 1.5
    python benchmarks/vs_diffusers.py --diffusers-script /tmp/ti.py --sizes sd15 --rounds 2 --steps 6

Both run as child processes of this one, on the same random-weight model (benchmarks/_models.py)
and the same pictures (toy-world scenes at the training resolution), in interleaved rounds: each
round runs every (setting, tool) pair, and the tool that goes first alternates from round to round,
so machine drift hits both alike. Each child is timed by benchmarks/_step_timer.py (torch's global
optimizer-step hook); its peak RSS is the kernel's ru_maxrss from os.wait4.

Settings:
  same  the line a diffusers user writes, fp32 (`--mixed_precision no`), given to both tools;
  best  each tool's best on this machine (BEST_DIFFUSERS / BEST_TIFORGE below): bf16 where the
        hardware has bf16 kernels (diffusers `--mixed_precision bf16`, tiforge bf16 frozen weights);
        on an AVX2-only CPU float32 is both tools' best, so "best" is "same" there.

Reported: median s/step after the first step, start-up (spawn to the end of the first step: imports,
model load, data, caching, the first step itself), peak RSS, the ratios (speed = diffusers/tiforge,
memory = tiforge/diffusers) and the drift between rounds (each tool's per-round medians, max/min).
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

def native_bf16() -> bool:
    """bf16 is each tool's best only where the hardware has bf16 kernels (a GPU, AVX512-BF16/AMX); an
    AVX2-only CPU emulates them, 10-40x slower than float32, so there float32 is both tools' best."""
    import torch

    return torch.cuda.is_available() or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# What each tool adds to the shared line for its best run. tiforge caches latents by itself whenever
# that is exact (per flip variant under the script's random flip), so no flag is needed for it.
BEST_DIFFUSERS = ["--mixed_precision", "bf16" if native_bf16() else "no"]
BEST_TIFORGE = ["--mixed_precision", "no", *(["--weight_dtype", "bfloat16"] if native_bf16() else [])]

RESOLUTION = {"tiny": 64, "tiny-xl": 64, "sd15": 256, "sdxl": 512}
SDXL_SIZES = ("tiny-xl", "sdxl")
TOOLS = ("diffusers", "tiforge")
SETTINGS = ("same", "best")

# Children must never reach a hub or a tracker service; the script's default tracker (TensorBoard)
# writes local files only and stays, as it is part of what a diffusers user runs.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "DIFFUSERS_OFFLINE": "1", "WANDB_MODE": "disabled", "WANDB_DISABLED": "true",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


@dataclass
class Run:
    """One child's measurements (seconds, GiB)."""

    size: str
    setting: str
    tool: str
    round: int
    step_s: float
    startup_s: float
    peak_gib: float
    steps: int
    caching_s: float | None = None


@dataclass
class Cell:
    """All rounds of one (size, setting, tool)."""

    runs: list[Run] = field(default_factory=list)

    @property
    def step_s(self) -> float:
        return statistics.median(r.step_s for r in self.runs)  # the median of the per-round medians

    @property
    def startup_s(self) -> float:
        return statistics.median(r.startup_s for r in self.runs)

    @property
    def peak_gib(self) -> float:
        return max(r.peak_gib for r in self.runs)

    @property
    def drift(self) -> float:
        medians = [r.step_s for r in self.runs]
        return max(medians) / min(medians)


def summarise(record: dict, spawned_at: float, maxrss_kib: int) -> dict:
    """A _step_timer record -> median s/step after the first step, start-up, peak GiB, caching."""
    steps = record["steps"]
    if len(steps) < 2:
        raise ValueError(f"need at least 2 optimizer steps to time one after the first, got {len(steps)}")
    intervals = [b - a for a, b in zip(steps, steps[1:])]
    caching = sum(end - start for start, end in record.get("caching", [])) if record.get("caching") else None
    return {"step_s": statistics.median(intervals), "startup_s": steps[0] - spawned_at,
            "peak_gib": maxrss_kib / 2**20, "steps": len(steps), "caching_s": caching}


def write_pictures(folder: Path, resolution: int, count: int = 4, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    from tiforge.toy.world import render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        picture = render(sample_scene(rng, shape="star", colour="purple", pretraining=False))
        picture.resize((resolution, resolution), Image.BICUBIC).save(folder / f"{i:02d}.png")


def shared_line(model: Path, data: Path, out: Path, resolution: int, steps: int) -> list[str]:
    """The command line as a diffusers user writes it; both tools take it as it is."""
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
            "--resolution", str(resolution), "--train_batch_size", "1", "--max_train_steps", str(steps),
            "--learnable_property", "object", "--placeholder_token", "<bench>", "--initializer_token", "toy",
            "--learning_rate", "5e-4", "--dataloader_num_workers", "0", "--output_dir", str(out), "--seed", "0"]


def command(tool: str, setting: str, script: Path, line: list[str], sdxl: bool) -> list[str]:
    if tool == "diffusers":
        extra = BEST_DIFFUSERS if setting == "best" else ["--mixed_precision", "no"]
        return ["script", str(script), *line, *extra]
    extra = BEST_TIFORGE if setting == "best" else ["--mixed_precision", "no"]
    return ["tiforge", "train", *line, *(["--sdxl"] if sdxl else []), *extra]


def run_child(target: list[str], log: Path) -> dict:
    """Run one trainer under the step timer; its measurements, or an error naming its log."""
    record_file = log.with_suffix(".json")
    env = {**os.environ, **OFFLINE_ENV}
    with open(log, "w") as out:
        spawned_at = time.perf_counter()
        child = subprocess.Popen([sys.executable, str(HERE / "_step_timer.py"), str(record_file), *target],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or not record_file.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{target[0]} exited with {child.returncode} (log {log}):\n{tail}")
    return summarise(json.loads(record_file.read_text()), spawned_at, usage.ru_maxrss)


def measure(args, work: Path) -> dict[tuple[str, str, str], Cell]:
    from _models import model_dir
    from _step_timer import _torchvision_without_ops

    _torchvision_without_ops()  # building a missing model imports transformers, which may import torchvision
    cells: dict[tuple[str, str, str], Cell] = {}
    for size in args.sizes.split(","):
        resolution, sdxl = RESOLUTION[size], size in SDXL_SIZES
        script = args.diffusers_script
        if sdxl:
            script = script.with_name("textual_inversion_sdxl.py")
        model, data = model_dir(size), work / f"pictures-{size}"
        write_pictures(data, resolution, args.pictures)
        for rnd in range(args.rounds):
            order = TOOLS if rnd % 2 == 0 else TOOLS[::-1]
            for setting in args.settings.split(","):
                for tool in order:
                    out = work / f"out-{size}-{setting}-{tool}-{rnd}"
                    line = shared_line(model, data, out, resolution, args.steps)
                    log = work / f"{size}-{setting}-{tool}-{rnd}.log"
                    result = run_child(command(tool, setting, script, line, sdxl), log)
                    shutil.rmtree(out, ignore_errors=True)
                    run = Run(size, setting, tool, rnd, **result)
                    cells.setdefault((size, setting, tool), Cell()).runs.append(run)
                    print(f"  {size} {setting:<4} {tool:<9} round {rnd + 1}: {run.step_s:.3f} s/step, "
                          f"start-up {run.startup_s:.1f} s, peak {run.peak_gib:.2f} GiB", flush=True)
    return cells


def tables(cells: dict[tuple[str, str, str], Cell]) -> str:
    rows = ["| model | settings | diffusers s/step | tiforge s/step | speed | diffusers start-up | "
            "tiforge start-up | diffusers peak | tiforge peak | memory |", "|---|---|---|---|---|---|---|---|---|---|"]
    drift = ["| model | settings | tool | per-round s/step | max/min |", "|---|---|---|---|---|"]
    for size, setting in dict.fromkeys((s, st) for s, st, _ in cells):
        d, t = cells[(size, setting, "diffusers")], cells[(size, setting, "tiforge")]
        rows.append(f"| {size} | {setting} | {d.step_s:.3f} | {t.step_s:.3f} | {d.step_s / t.step_s:.2f}x | "
                    f"{d.startup_s:.1f} s | {t.startup_s:.1f} s | {d.peak_gib:.2f} GiB | {t.peak_gib:.2f} GiB | "
                    f"{t.peak_gib / d.peak_gib:.2f}x |")
        for tool, cell in (("diffusers", d), ("tiforge", t)):
            per_round = ", ".join(f"{r.step_s:.3f}" for r in cell.runs)
            drift.append(f"| {size} | {setting} | {tool} | {per_round} | {cell.drift:.2f} |")
    return "\n".join(rows) + "\n\nDrift between rounds:\n\n" + "\n".join(drift)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-script", type=Path, required=True,
                        help="a diffusers clone's examples/textual_inversion/textual_inversion.py "
                             "(textual_inversion_sdxl.py beside it is used for SDXL sizes)")
    parser.add_argument("--sizes", default="tiny,sd15", help="comma-separated: tiny, sd15, tiny-xl, sdxl")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: same, best")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--pictures", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep the children's logs and timing records in this folder")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this JSON file")
    args = parser.parse_args()
    if not args.diffusers_script.is_file():
        parser.error(f"--diffusers-script {args.diffusers_script}: no such file")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is start-up)")
    unknown = set(args.sizes.split(",")) - set(RESOLUTION)
    if unknown:
        parser.error(f"--sizes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(RESOLUTION)})")
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(f"--settings: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SETTINGS)})")
    work = Path(tempfile.mkdtemp(prefix="tiforge-vs-diffusers-"))
    try:
        cells = measure(args, work)
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("out-*", "pictures-*"))
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps([vars(r) for c in cells.values() for r in c.runs], indent=1))
    print()
    print(tables(cells))
    print("\nspeed = diffusers s/step / tiforge s/step (higher: tiforge faster); memory = tiforge peak RSS / "
          "diffusers peak RSS (lower: tiforge smaller); start-up = spawn to the end of the first step.")


if __name__ == "__main__":
    main()
