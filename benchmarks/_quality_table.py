"""The quality yardstick's tables: per (method, step budget), each score's mean and spread over seeds.

A record is one judged embedding: {"method", "seed", "step", "identity", "editability", and one key
per composition}. The start (the initializer's vectors, step 0) is the same for every tool and seed,
so it is recorded once, under START, and shown in every method's step-0 cell.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

START = "start"
DIFFUSERS = "diffusers script"


def summarise(records: list[dict], metrics: list[str]) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
    """(method, step) -> metric -> (mean, sample standard deviation over seeds (0 for one), seeds)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["step"])].append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {}
        for m in metrics:
            values = [r[m] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key][m] = (statistics.fmean(values), spread, len(values))
    return out


def cell(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return "-"
    mean, spread, n = stats
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {spread:.2f}"


def _lookup(summary, method: str, step: int):
    return summary.get((method, step)) or (summary.get((START, 0)) if step == 0 else None)


def side_by_side(records: list[dict], ours: str, theirs: str = DIFFUSERS) -> str:
    """The issue's table: identity and editability, `ours` / `theirs`, one row per step budget."""
    summary = summarise(records, ["identity", "editability"])
    steps = sorted({r["step"] for r in records})
    rows = [f"| steps | identity, {ours} / {theirs} | editability, {ours} / {theirs} |", "|---|---|---|"]
    for step in steps:
        a, b = _lookup(summary, ours, step), _lookup(summary, theirs, step)
        rows.append(f"| {step} | " + " | ".join(
            f"{cell(a and a[m])} / {cell(b and b[m])}" for m in ("identity", "editability")) + " |")
    return "\n".join(rows)


def detailed(records: list[dict], compositions: list[str]) -> str:
    """Every method at every step budget, with each composition's own score."""
    metrics = ["identity", "editability", *compositions]
    summary = summarise(records, metrics)
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != START))
    steps = sorted({r["step"] for r in records})
    rows = ["| steps | method | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for step in steps:
        for method in methods if step else [START]:
            stats = _lookup(summary, method, step)
            if stats is not None:
                rows.append(f"| {step} | {method} | " + " | ".join(cell(stats[m]) for m in metrics) + " |")
    return "\n".join(rows)
