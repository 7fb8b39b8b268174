"""Launch a trainer in this process and record when each optimizer step ends.

    python benchmarks/_step_timer.py OUT.json script PATH.py [ARGS...]   # e.g. the diffusers example
    python benchmarks/_step_timer.py OUT.json tiforge [ARGS...]          # `tiforge ARGS...`

Both tools are timed by the same hook: torch's global optimizer-step post hook, which fires after
every `Optimizer.step()` of any optimizer in the process (accelerate's wrapper calls the inner one),
so neither tool's own logging is trusted. Times are `time.perf_counter()` (CLOCK_MONOTONIC, shared
by all processes on Linux), so a parent can subtract its own spawn time. For tiforge the latent
caching is timed too, by wrapping the recipe's `cache_vae_outputs` when it has one.

OUT.json: {"launcher_start": t, "imported_torch": t, "steps": [t1, t2, ...], "caching": [[t0, t1], ...],
"exit_code": n}; written even when the target fails, so the parent can say what happened.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
import types
from pathlib import Path

LAUNCHER_START = time.perf_counter()


def _record_steps(record: dict):
    # torch.optim drops its `optimizer` submodule name from its namespace: import the function itself
    from torch.optim.optimizer import register_optimizer_step_post_hook

    record["imported_torch"] = time.perf_counter()

    def on_step(optimizer, args, kwargs):
        record["steps"].append(time.perf_counter())

    return register_optimizer_step_post_hook(on_step)


def _time_caching(record: dict) -> None:
    """Wrap tiforge's latent caching (where the recipe has it) to time it separately from start-up."""
    try:
        import tiforge.training.recipe as recipe
    except ImportError:
        return
    real = getattr(recipe, "cache_vae_outputs", None)
    if real is None:
        return

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            record["caching"].append([start, time.perf_counter()])

    recipe.cache_vae_outputs = timed


def _relax_min_version() -> None:
    """An example script from a newer clone demands that clone's dev version of diffusers; the
    installed release runs the textual-inversion script all the same, so say it and go on."""
    import diffusers.utils

    real = diffusers.utils.check_min_version

    def check(min_version: str) -> None:
        try:
            real(min_version)
        except ImportError as err:
            print(f"_step_timer: going on although {err}", file=sys.stderr)

    diffusers.utils.check_min_version = check


def _torchvision_without_ops() -> None:
    """The example script imports torchvision (for one PIL flip). A CUDA build of torchvision next to a
    CPU-only torch cannot load its C ops (nms, roi_align), and its import then fails while registering
    their meta kernels, which only serve torch.compile of those detection ops. For such a pair, mark
    that module as loaded so the rest of torchvision imports as it is; nothing is imported here, so
    neither tool's start-up changes. Both tools get the same treatment (transformers may import it)."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or torch.version.cuda is not None:
        return
    version = Path(spec.submodule_search_locations[0], "version.py")
    if "+cu" in (version.read_text() if version.is_file() else ""):
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        print("_step_timer: torchvision is a CUDA build beside a CPU-only torch; its detection ops' meta "
              "registrations are skipped", file=sys.stderr)


def _run(target: str, argv: list[str], record: dict) -> int:
    if target == "script":
        _relax_min_version()
        sys.argv = list(argv)
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        return 0
    if target == "tiforge":
        _time_caching(record)
        from tiforge.frontends.cli import main

        sys.argv = ["tiforge", *argv]
        return int(main(argv) or 0)
    raise SystemExit(f"unknown target {target!r}: script or tiforge")


def main(args: list[str] | None = None) -> int:
    out, target, *argv = sys.argv[1:] if args is None else args
    record: dict = {"launcher_start": LAUNCHER_START, "steps": [], "caching": [], "exit_code": None}
    hook = None
    try:
        hook = _record_steps(record)
        _torchvision_without_ops()
        record["exit_code"] = code = _run(target, argv, record)
    except BaseException:
        record["exit_code"] = code = 1
        raise
    finally:
        if hook is not None:
            hook.remove()  # a global hook: gone again when the launcher is called in-process (tests)
        with open(out, "w") as f:
            json.dump(record, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
