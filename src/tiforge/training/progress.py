"""Progress bars: the short ones inside setup (checking data, caching latents, saving) and the
training bar, which is just a listener of the run's step events."""

from __future__ import annotations

from tqdm.auto import tqdm

from tiforge.training import events


def progress_bar(desc: str, enabled: bool):
    """Wraps an iterable in a bar when enabled."""
    return lambda it: tqdm(it, desc=desc, disable=not enabled, dynamic_ncols=True)


class TrainingBar:
    """Steps, loss, learning rate and epoch on one line."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Started):
            self.bar = tqdm(total=event.max_steps, initial=event.step, desc="training", dynamic_ncols=True)
        elif isinstance(event, events.Step) and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", epoch=event.epoch)
        elif isinstance(event, events.Finished) and self.bar is not None:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class one_task:
    """A bar for one long task with no inner steps (saving a checkpoint): 0/1 while it runs, then 1/1."""

    def __init__(self, desc: str, enabled: bool):
        self.bar = tqdm(total=1, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)

    def __enter__(self) -> "one_task":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.bar.update(1)
        self.bar.close()
