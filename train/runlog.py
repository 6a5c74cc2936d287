"""Run records shared by the trainers: a rich progress bar over steps and an optional TensorBoard
writer (None when tensorboard is not installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["StepProgress", "open_tensorboard"]


def open_tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


class StepProgress:
    """``with StepProgress("sft", total, done) as bar: bar(step, "loss 0.123")`` (silent when disabled)."""

    def __init__(self, label: str, total: int, completed: int = 0, enabled: bool = True):
        self.label, self.total, self.completed, self.enabled = label, total, completed, enabled
        self.bar: Any = None

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.progress import Progress

            self.bar = Progress(*Progress.get_default_columns(), "{task.fields[info]}")
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, completed=self.completed, info="")
        return self

    def __call__(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
