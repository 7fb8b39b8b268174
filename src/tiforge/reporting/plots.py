"""The report's plots, drawn with matplotlib's Agg backend (no display needed) into PNG bytes."""

from __future__ import annotations

import io
import threading
from typing import Callable

from tiforge.embeddings.vocabulary import NormRange


def on_own_thread(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw on a short-lived thread. matplotlib's first use parses font settings with pyparsing, whose
    exceptions keep their tracebacks in reference cycles; drawn from the training loop, those frames
    would hold the whole finished run (model, data loader workers) until a garbage collection - and
    an interpreter exiting before one waits forever on the workers."""

    def run(*args, **kwargs) -> bytes:
        result: dict = {}

        def target() -> None:
            try:
                result["png"] = draw(*args, **kwargs)
            except BaseException as err:  # re-raised on the caller's thread
                result["error"] = err

        thread = threading.Thread(target=target, name="tiforge-report-plot")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["png"]

    return run


def _figure(rows: int, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state shared with the caller

    fig = Figure(figsize=(9, height * rows), dpi=90)
    # fixed margins: an automatic layout engine costs more than drawing the plot itself
    margin = 0.35 / (height * rows)
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 1.2 * margin, bottom=2 * margin, hspace=0.45)
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the start is not pulled to 0."""
    out, average = [], 0.0
    for n, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** n))
    return out


@on_own_thread
def loss_and_lr(steps: list[int], losses: list[float], lrs: list[float]) -> bytes:
    fig, (loss_ax, lr_ax) = _figure(2, 2.4)
    loss_ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="loss")
    loss_ax.plot(steps, smoothed(losses), color="#08519c", linewidth=1.8, label="smoothed (EMA 0.9)")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right", fontsize="small")
    lr_ax.plot(steps, lrs, color="#d94801")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))  # 1e-2 above the axis, short tick labels
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
    return _png(fig)


@on_own_thread
def vector_norms(steps: list[int], norms: dict[str, list[list[float]]], labels: dict[str, list[str]],
                 ranges: dict[str, NormRange]) -> bytes:
    """One panel per text encoder: each vector's norm over the steps, over the band where the
    encoder's own token vectors lie (5th-95th percentile shaded, min and max dotted, median dashed)."""
    fig, axes = _figure(len(norms), 2.6)
    for ax, (name, per_step) in zip(axes, norms.items()):
        span = ranges[name]
        ax.axhspan(span.p5, span.p95, color="#c7e9c0", alpha=0.6, label="vocabulary 5-95%")
        ax.axhline(span.median, color="#238b45", linestyle="--", linewidth=1, label="vocabulary median")
        for bound in (span.min, span.max):
            ax.axhline(bound, color="#238b45", linestyle=":", linewidth=1)
        for i, label in enumerate(labels[name]):
            ax.plot(steps, [row[i] for row in per_step], linewidth=1.4, label=label)
        ax.set_title(f"vector norms: {name} (vocabulary min {span.min:.3f}, max {span.max:.3f})", fontsize="medium")
        ax.set_ylabel("norm")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", ncol=3)
    axes[-1].set_xlabel("step")
    return _png(fig)
