"""A run's numbers as JSON lines that survive a stop and a resume.

metrics.jsonl holds one line per optimizer step ({"step", "loss", "lr", "seconds", ...}); the web UI
reads it for past runs. report_snapshots.jsonl holds one line per report refresh (nearest tokens,
norms, which validation folder). A resumed run continues from a checkpoint's step, so lines past that
step describe a future that was thrown away: they are dropped when the run starts again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tiforge.atomic import atomic_write_text

log = logging.getLogger(__name__)


class JsonLines:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def start_at(self, step: int) -> None:
        """Step 0: a new run, an empty log (an earlier run's in the same folder is replaced).
        Step N: a resumed run keeps the lines up to N, on disk too."""
        self.rows = [row for row in self._read() if row.get("step", 0) <= step] if step else []
        if step or self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def replace_last(self, row: dict) -> None:
        self.rows[-1] = row
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: the rest is still good
                log.warning("%s line %d is not JSON; left out", self.path, number)
        return rows
