"""Where a run's files are: found on disk at each refresh (checkpoints get pruned, validations added),
named relative to the run folder so the page's links work wherever the folder is moved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFile:
    kind: str
    path: str  # relative to the run folder when inside it
    note: str = ""


def run_files(recipe, written: dict[str, list[str]]) -> list[RunFile]:
    run_dir, plan = Path(recipe.run_dir), recipe.plan
    found: list[tuple[str, Path, str]] = [
        ("embedding", plan.final, "the trained embedding"),
        ("config", run_dir / "config.yaml", "the resolved config: train it again with `tiforge train` on it"),
        ("log", run_dir / "train.log", ""),
        ("metrics", run_dir / "metrics.jsonl", "one JSON line per step"),
        ("report", run_dir / "report_snapshots.jsonl", "nearest tokens and norms at each refresh"),
        ("logs", run_dir / "logs", "tracker logs (TensorBoard: tensorboard --logdir)"),
    ]
    for kind in ("step", "epoch", "end"):
        found += [("checkpoint", p, "resume: --set resume_from_checkpoint=<it>")
                  for p in sorted(run_dir.glob(plan.checkpoint_siblings(kind))) if p.is_dir()]
    snapshots = sorted(run_dir.glob(f"embeddings/*.{plan.extension}")) + sorted(
        p for p in run_dir.glob(f"*.{plan.extension}") if p != plan.final)
    found += [("embedding snapshot", p, "") for p in snapshots]
    found += [("validation", p, "") for p in sorted((run_dir / "validation").glob("*/"))]
    found += [("samples", p, "") for p in sorted({Path(s).parent for s in written.get("sample", [])})]
    out, seen = [], set()
    for kind, path, note in found:
        if path in seen or not path.exists():
            continue
        seen.add(path)
        out.append(RunFile(kind, _relative(path, run_dir), note))
    return out


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)
