"""A rich progress bar over epochs, silent when not on a terminal or not rank 0."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    def __init__(self, progress: Progress, task: int):
        self._p, self._task = progress, task

    def advance_to(self, epoch: int) -> None:
        self._p.update(self._task, completed=epoch)

    def update(self, epoch: int, train_loss: float, val_loss: float, val_metric: float) -> None:
        self._p.update(
            self._task,
            completed=epoch,
            stats=f"loss {train_loss:.4f}  val_loss {val_loss:.4f}  val {val_metric:.4f}",
        )


@contextmanager
def epoch_progress(epochs: int, enabled: bool = True) -> Iterator[EpochProgress]:
    show = enabled and sys.stderr.isatty()
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        disable=not show,
        transient=False,
    )
    with progress:
        yield EpochProgress(progress, progress.add_task("train", total=epochs, stats=""))


class StepProgress:
    def __init__(self, progress: Progress, task: int):
        self._p, self._task = progress, task

    def done(self, step: str) -> None:
        self._p.update(self._task, advance=1, stats=f"{step} done")


@contextmanager
def step_progress(steps: list[str], label: str = "export") -> Iterator[StepProgress]:
    """A bar over named steps (rich), silent when not on a terminal."""
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        disable=not sys.stderr.isatty(),
    )
    with progress:
        yield StepProgress(progress, progress.add_task(label, total=len(steps), stats=""))
