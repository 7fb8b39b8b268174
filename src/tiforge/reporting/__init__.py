"""report.html: one self-contained page per run (plots, nearest tokens, validation grids, data,
config, timings, files), and metrics.jsonl, the run's per-step numbers.

    collector.RunReport   hears the run's events, writes metrics.jsonl, renders at validation/end/stop
    history               the two line logs (metrics.jsonl, report_snapshots.jsonl) and their resume trim
    vectors               nearest vocabulary tokens and norms of the vectors being trained
    data_summary          the pictures and the captions they train with, token ids and all
    plots                 matplotlib (Agg) figures as PNG bytes
    page                  the HTML (jinja2, autoescaped), images inlined as data: URIs
"""

from tiforge.reporting.collector import RunReport

__all__ = ["RunReport"]
