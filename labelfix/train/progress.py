"""The training progress display: a rich bar (loss, images/s, ETA) on rank 0, or plain
lines on stderr when the bar is off."""

from __future__ import annotations

import math
import sys


class Progress:
    """A rich progress bar (loss, images/s, ETA) on rank 0, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int):
        if self.bar is None:
            return None
        return self.bar.add_task(description, total=total, loss=float("nan"), ips=0.0)

    def update(self, task, **kw):
        if self.bar is not None and task is not None:
            self.bar.update(task, **kw)

    def log(self, text: str):
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            to_stderr(text)


def to_stderr(text: str) -> None:
    """Where training's lines go without a log function or a progress bar (the CLI)."""
    print(text, file=sys.stderr, flush=True)


def format_row(row: dict) -> str:
    """One log line of an epoch's metrics row."""
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_map", "val_map_ema"):
        if key in row and not math.isnan(row[key]):
            parts.append(f"{key} {row[key]:.2f}")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)
