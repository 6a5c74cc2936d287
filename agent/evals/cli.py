"""``agent eval``: a thin CLI over ``agent.evals.run_eval``. Flags come from ``EvalConfig`` and
``RuntimeConfig``; ``--tools`` adds one mode per use; ``--compare A.json B.json`` prints two summaries
side by side instead of running anything."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agent.config import HelpFormatter, add_arguments, from_args
from agent.errors import ConfigError, DataError
from agent.evals.config import EvalConfig, mode_name, parse_mode
from agent.evals.report import compare_table, family_table, summary_table
from agent.evals.runner import run_eval
from agent.runtime import RuntimeConfig

__all__ = ["add_parser", "config_from_args", "handler", "load_summary"]

EXAMPLES = """examples:
  agent eval gen:arith,count --limit 200 --tools none --tools python
  agent eval data/gsm8k.jsonl --limit 50 --samples 5 --temperature 0.7 --modes none,python
  agent eval hotpotqa_train.json --tools search --out runs/hotpot
  agent eval --compare runs/a/summary.json runs/b/summary.json
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a model with and without tools on a dataset",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=HelpFormatter)
    p.add_argument("data", nargs="?", default="", help=EvalConfig.__dataclass_fields__["data"].metadata["help"])
    p.add_argument("--tools", action="append", dest="tool_modes", metavar="A,B", default=[],
                   help="add one mode with these tools (none | python | search | python,search); repeatable")
    p.add_argument("--compare", nargs=2, metavar=("A_JSON", "B_JSON"),
                   help="print two runs' summary.json side by side and exit")
    add_arguments(p, EvalConfig, skip=("data", "runtime"))
    add_arguments(p, RuntimeConfig, skip=("tools",))
    p.set_defaults(func=handler)
    return p


def config_from_args(ns: argparse.Namespace) -> EvalConfig:
    modes = list(getattr(ns, "modes", [])) + [mode_name(parse_mode(t)) for t in ns.tool_modes]
    extra: dict[str, Any] = {"modes": modes} if modes else {}
    return from_args(EvalConfig, ns, data=ns.data, runtime=from_args(RuntimeConfig, ns), **extra)


class _LiveProgress:
    """Progress bar with running accuracy per mode (a ``Progress`` callback of ``evaluate``). The bar
    appears with the first callback, once the data loaded, so an early error prints alone."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: Any = None  # set (and the bar shown) by the first callback
        self.right: dict[str, int] = defaultdict(int)
        self.seen: dict[str, int] = defaultdict(int)

    def __call__(self, done: int, total: int, rec: dict[str, Any] | None) -> None:
        if rec is None:
            self.progress.start()
            self.task = self.progress.add_task("eval", total=total, completed=done)
            return
        self.seen[rec["mode"]] += 1
        self.right[rec["mode"]] += int(rec["correct"])
        acc = "  ".join(f"{m} {self.right[m] / n:.2f}" for m, n in self.seen.items())
        self.progress.update(self.task, completed=done, description=f"eval  acc: {acc}")


def load_summary(path: str) -> dict[str, Any]:
    """A run's ``summary.json``; ``DataError`` naming the file when it is missing or not a summary."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no such file; give the summary.json an eval run wrote") from None
    except (OSError, ValueError, RecursionError) as e:  # a folder, unreadable, not UTF-8, not JSON
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{p}: not a readable summary.json ({reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("modes"), dict):
        raise DataError(f"{p}: not an eval summary (no 'modes' object); give the summary.json of a run")
    return data


def _compare(paths: list[str], out: Console) -> int:
    a, b = (load_summary(p) for p in paths)
    out.print(compare_table(a, b, paths[0], paths[1]))
    return 0


def _run(ns: argparse.Namespace, out: Console, err: Console) -> int:
    cfg = config_from_args(ns)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    live = _LiveProgress(Progress(*columns, console=err, transient=False))
    try:
        summary = run_eval(cfg, progress=live)
    finally:
        if live.task is not None:
            live.progress.stop()
    out.print(summary_table(summary))
    if len(summary["families"]) > 1:
        out.print(family_table(summary))
    for name, path in summary["files"].items():
        out.print(f"{name}: {path}")
    return 0


def handler(ns: argparse.Namespace) -> int:
    """Run or compare. SpliceErrors propagate to ``agent.cli.main``, which prints them."""
    out, err = Console(), Console(stderr=True)
    if ns.compare:
        return _compare(ns.compare, out)
    if not ns.data:
        raise ConfigError("give a dataset (a .jsonl/.json file or gen:arith,count) or --compare A B")
    try:
        return _run(ns, out, err)
    except KeyboardInterrupt:
        err.print("interrupted: finished episodes are saved; run the same command again to resume")
        return 130
