"""How tiforge's cost grows: s/step by resolution x batch, and start-up + caching by dataset size.

    python benchmarks/scaling.py                                   # full SD 1.5 architecture, both tables
    python benchmarks/scaling.py --resolutions 256 --batches 1,2   # a subset of the grid
    python benchmarks/scaling.py --parts startup --pictures 10,100 # only the start-up table
    python benchmarks/scaling.py --size tiny --steps 3             # seconds: checks the harness

Every run is `tiforge train` at its best settings (vs_diffusers.BEST_TIFORGE: bf16 frozen weights,
cached latents, ...) in its own child process, timed by benchmarks/_step_timer.py: s/step is the
median after the first step; start-up is spawn to the end of the first step; caching is the time
spent in the recipe's latent caching (part of start-up).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_diffusers import BEST_TIFORGE, run_child, shared_line, write_pictures  # noqa: E402


def tiforge_run(model: Path, work: Path, name: str, pictures: int, resolution: int, batch: int, steps: int) -> dict:
    data, out = work / f"pictures-{pictures}-{resolution}", work / f"out-{name}"
    if not data.is_dir():
        write_pictures(data, resolution, pictures)
    line = shared_line(model, data, out, resolution, steps)
    line[line.index("--train_batch_size") + 1] = str(batch)
    try:
        return run_child(["tiforge", "train", *line, *BEST_TIFORGE], work / f"{name}.log")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def grid(model: Path, work: Path, resolutions: list[int], batches: list[int], steps: int) -> str:
    rows = ["| px | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---" * (len(batches) + 1) + "|"]
    for res in resolutions:
        cells = []
        for batch in batches:
            r = tiforge_run(model, work, f"grid-{res}-{batch}", max(batches), res, batch, steps)
            print(f"  {res} px batch {batch}: {r['step_s']:.3f} s/step, peak {r['peak_gib']:.2f} GiB", flush=True)
            cells.append(f"{r['step_s']:.2f} s ({r['step_s'] / batch:.2f} s/picture, {r['peak_gib']:.2f} GiB)")
        rows.append(f"| {res} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def startup(model: Path, work: Path, counts: list[int], resolution: int) -> str:
    rows = ["| pictures | start-up (to the end of step 1) | of it caching | caching per picture |",
            "|---|---|---|---|"]
    for count in counts:
        r = tiforge_run(model, work, f"startup-{count}", count, resolution, 1, 2)
        caching = r["caching_s"]
        spent = f"{caching:.1f} s" if caching is not None else "not reported"
        per = f"{1000 * caching / count:.0f} ms" if caching is not None else "not reported"
        print(f"  {count} pictures: start-up {r['startup_s']:.1f} s, caching {spent}", flush=True)
        rows.append(f"| {count} | {r['startup_s']:.1f} s | {spent} | {per} |")
    return "\n".join(rows)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="sd15", help="benchmarks/_models.py model: sd15 (default) or tiny")
    parser.add_argument("--parts", default="grid,startup", help="comma-separated: grid, startup")
    parser.add_argument("--resolutions", type=_ints, default=[256, 384, 512])
    parser.add_argument("--batches", type=_ints, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per grid run (the first is not timed)")
    parser.add_argument("--pictures", type=_ints, default=[10, 100, 1000], help="dataset sizes for start-up")
    parser.add_argument("--startup-resolution", type=int, default=256)
    args = parser.parse_args()
    from _models import model_dir

    model, parts = model_dir(args.size), args.parts.split(",")
    work = Path(tempfile.mkdtemp(prefix="tiforge-scaling-"))
    try:
        if "grid" in parts:
            print(f"\ns/step, {args.size}, tiforge best settings ({' '.join(BEST_TIFORGE)}):\n")
            print(grid(model, work, args.resolutions, args.batches, args.steps))
        if "startup" in parts:
            print(f"\nstart-up and latent caching, {args.size}, {args.startup_resolution} px:\n")
            print(startup(model, work, args.pictures, args.startup_resolution))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
