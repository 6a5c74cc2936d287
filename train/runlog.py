"""Run records shared by the trainers: ``MetricsLog`` (``metrics.csv``, TensorBoard scalars, a PNG),
a rich progress bar over steps, and an optional TensorBoard writer (None when tensorboard is not
installed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "StepProgress", "open_tensorboard"]


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


class MetricsLog:
    """One CSV row per step in ``<out>/metrics.csv``, appended as it is logged (a killed run keeps
    every row it logged), TensorBoard scalars ``<prefix>/<name>`` under ``<out>/tensorboard/`` when
    tensorboard is installed, and ``plot(rows, path)`` drawn to ``<out>/<png>`` every ``plot_every``
    rows (0: only at ``close``). ``rows`` is what a resumed run starts from (the log appends to that
    same list); the CSV is rewritten from it at the start and at ``close``. ``enabled=False`` (a
    non-main process) keeps the rows and writes nothing."""

    def __init__(self, out: Path, fields: Sequence[str], rows: list[dict[str, Any]] | None = None, *,
                 prefix: str = "", png: str = "", plot: Callable[[list[dict[str, Any]], Path], Any] | None = None,
                 plot_every: int = 0, enabled: bool = True):
        self.out, self.fields, self.prefix, self.enabled = Path(out), list(fields), prefix, enabled
        self.rows = rows if rows is not None else []
        self.png, self.plot, self.plot_every = png, plot, plot_every
        self.csv = self.out / "metrics.csv"
        self.tb = None
        if enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            self._rewrite()
            self.tb = open_tensorboard(self.out / "tensorboard")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The rows of a ``metrics.csv`` (strings; empty cells left out)."""
        import csv

        if not Path(path).exists():
            return []
        with Path(path).open(newline="") as f:
            return [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]

    def _rewrite(self) -> None:
        import csv

        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        import csv

        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.tb.add_scalar(f"{self.prefix}/{k}" if self.prefix else k, v, int(row["step"]))
        if self.plot_every and len(self.rows) % self.plot_every == 0:
            self._draw()

    def _draw(self) -> None:
        if self.plot is not None and self.png and self.rows:
            self.plot(self.rows, self.out / self.png)

    def close(self) -> None:
        if not self.enabled:
            return
        self._rewrite()
        self._draw()
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
