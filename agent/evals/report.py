"""Presenting a run: rich tables for the terminal, a matplotlib plot, a self-contained HTML report.

The HTML page (``prompts/report.html.j2``) has one card per (question, mode): the question, the
gold, the vote, and each sample's trajectory split into blocks (model text, tool call, tool result).
Cards carry ``data-family``, ``data-mode`` and ``data-outcome`` (correct | wrong | refused); a few
lines of inline JS filter them, and a URL hash such as ``#outcome=wrong&family=count`` pre-selects
a filter. No network: the plot is inlined as a data URI.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.errors import MissingDependency, require
from agent.evals.summary import compare, vote_question
from agent.syntax import get_syntax
from prompts import render

__all__ = [
    "compare_table",
    "family_table",
    "outcome",
    "summary_table",
    "trajectory_blocks",
    "write_html",
    "write_plot",
]

log = logging.getLogger("splice.evals")


def display_name(data: str) -> str:
    """A dataset's short name for titles: the file name, or the gen: spec as is."""
    return data if data.startswith("gen:") else Path(data).name


# -- terminal ------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


_ACCURACY_COLS = (("n", "n_questions"), ("acc", "accuracy"), ("EM", "em"), ("F1", "f1"))
_BEHAVIOUR_COLS = (("refusal", "refusal_rate"), ("tools/ep", "tool_calls_per_episode"),
                   ("malformed", "malformed_rate"), ("tok/q", "tokens_per_question"), ("s/q", "seconds_per_question"))
_PASS_KEYS_INLINE = 4  # more pass@k columns than this get their own table (80-column terminals)


def _metric_table(title: str, modes: dict[str, Any], cols: list[tuple[str, str]]) -> Table:
    """One row per mode; figures never wrap or truncate (the mode name folds instead)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    table.add_column("mode", overflow="fold")
    for head, _ in cols:
        table.add_column(head, justify="right", no_wrap=True, min_width=len(head))
    for mode, m in modes.items():
        table.add_row(mode, *[_fmt(m.get(key)) for _, key in cols])
    return table


def summary_table(summary: dict[str, Any]) -> Group:
    """The headline figures, in tables narrow enough for an 80-column terminal: accuracy (with
    pass@k, or pass@k on its own when there are many k), then behaviour and cost."""
    modes = summary["modes"]
    pass_keys = sorted({k for m in modes.values() for k in m if k.startswith("pass@")},
                       key=lambda k: int(k.split("@")[1]))
    passes = [(k, k) for k in pass_keys]
    title = f"{display_name(summary['data'])} · {summary['model']} · {summary['samples']} sample(s)/question"
    inline = len(passes) <= _PASS_KEYS_INLINE
    tables: list[Any] = [Text(title, style="bold"),
                         _metric_table("accuracy", modes, [*_ACCURACY_COLS, *(passes if inline else [])])]
    if not inline:
        tables.append(_metric_table("pass@k", modes, passes))
    tables.append(_metric_table("behaviour and cost", modes, list(_BEHAVIOUR_COLS)))
    return Group(*tables)


def family_table(summary: dict[str, Any]) -> Table:
    modes = list(summary["modes"])
    table = Table(title="accuracy by family")
    table.add_column("family")
    for mode in modes:
        table.add_column(mode, justify="right")
    for fam in summary["families"]:
        cells = []
        for mode in modes:
            f = summary["modes"][mode]["by_family"].get(fam)
            cells.append(f"{f['accuracy']:.3f} (n={f['n_questions']})" if f else "-")
        table.add_row(fam, *cells)
    return table


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> Table:
    table = Table(title=f"A = {name_a}   B = {name_b}")
    for c in ("mode", "metric", "A", "B", "B - A"):
        table.add_column(c, justify="left" if c in ("mode", "metric") else "right")
    for row in compare(a, b):
        d = row["delta"]
        delta = "-" if d is None else (f"[green]{d:+.3f}[/]" if d > 0 else f"[red]{d:+.3f}[/]" if d < 0 else "0")
        table.add_row(row["mode"], row["metric"], _fmt(row["a"]), _fmt(row["b"]), delta)
    return table


# -- plot ----------------------------------------------------------------------------------------------
def write_plot(summary: dict[str, Any], path: Path) -> Path | None:
    """Accuracy by mode (bars) and by number of samples (lines); None when matplotlib is missing."""
    try:
        matplotlib = require("matplotlib", "eval")
    except MissingDependency as e:
        log.warning("no plot: %s", e)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = summary["modes"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        names = list(modes)
        bars = ax1.bar(names, [modes[m]["accuracy"] for m in names], color="#4c72b0")
        ax1.bar_label(bars, fmt="%.2f")
        ax1.set_ylim(0, 1.05)
        ax1.set_ylabel("accuracy (majority vote)")
        ax1.set_title("accuracy by mode")
        k_max = 1
        for m in names:
            ks = sorted(int(k) for k in modes[m]["by_samples"])
            ax2.plot(ks, [modes[m]["by_samples"][str(k)] for k in ks], marker="o", label=m)
            k_max = max([k_max, *ks])
        ax2.set_xticks(range(1, k_max + 1))
        ax2.set_xlim(0.5, k_max + 0.5)
        ax2.set_ylim(0, 1.05)
        ax2.set_xlabel("samples voted")
        ax2.set_ylabel("accuracy")
        ax2.set_title("accuracy by number of samples")
        ax2.legend()
        fig.suptitle(f"{display_name(summary['data'])} · {summary['model']}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


# -- HTML ----------------------------------------------------------------------------------------------
def outcome(vote: dict[str, Any]) -> str:
    if vote["correct"]:
        return "correct"
    return "refused" if vote["refusal"] else "wrong"


def _call_start(text: str, call: dict[str, Any], syntax_name: str) -> int:
    """Where a tool call begins in the model text that ends with it (-1 when not found)."""
    try:
        syntax = get_syntax(syntax_name)
    except ValueError:
        return -1
    if call.get("malformed"):
        return text.rfind(call["arg"]) if call["arg"] else -1
    tag = syntax.calls.open_tag(syntax, call["tool"])
    return text.rfind(tag)


def trajectory_blocks(traj: dict[str, Any]) -> list[dict[str, Any]]:
    """The episode after the prompt as blocks: {kind: text|call|result, text, tool, error}."""
    segs = [s for s in traj.get("segments", []) if s["source"] != "prompt"]
    calls = traj.get("tool_calls", [])
    blocks: list[dict[str, Any]] = []
    ci = 0
    for j, seg in enumerate(segs):
        if seg["source"] == "result":
            call = calls[ci] if ci < len(calls) else {"result": seg["text"], "error": False}
            blocks.append({"kind": "result", "text": call["result"], "error": bool(call.get("error"))})
            ci += 1
            continue
        text = seg["text"]
        followed = j + 1 < len(segs) and segs[j + 1]["source"] == "result" and ci < len(calls)
        if followed:
            call = calls[ci]
            cut = _call_start(text, call, traj.get("syntax", "splice"))
            cut = cut if cut >= 0 else len(text)
            if text[:cut].strip():
                blocks.append({"kind": "text", "text": text[:cut]})
            label = call["tool"] or f"malformed ({call.get('malformed')})"
            blocks.append({"kind": "call", "tool": label, "text": text[cut:] or call["arg"],
                           "error": bool(call.get("malformed"))})
        elif text.strip():
            blocks.append({"kind": "text", "text": text})
    return blocks


def _natural(text: str) -> list[tuple[int, int | str]]:
    """Sort key putting "q2" before "q10"."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def _cards(records: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["id"], r["mode"])].append(r)
    mode_order = {m: i for i, m in enumerate(summary["modes"])}
    cards = []
    for (qid, mode), samples in groups.items():
        samples.sort(key=lambda r: r["sample"])
        vote = vote_question(samples)
        first = samples[0]
        cards.append({
            "id": qid, "mode": mode, "family": first["family"], "question": first["question"],
            "gold": first["gold"], "vote": vote, "outcome": outcome(vote),
            "samples": [{"sample": r["sample"], "pred": r["pred"], "correct": r["correct"],
                         "n_tokens": r["n_tokens"], "seconds": r["seconds"], "stop": r["stop_reason"],
                         "blocks": trajectory_blocks(r["trajectory"])} for r in samples],
        })
    cards.sort(key=lambda c: (_natural(c["id"]), mode_order.get(c["mode"], 99)))
    return cards


def write_html(records: list[dict[str, Any]], summary: dict[str, Any], path: Path,
               plot: Path | None = None) -> Path:
    plot_uri = ""
    if plot and Path(plot).exists():
        plot_uri = "data:image/png;base64," + base64.b64encode(Path(plot).read_bytes()).decode()
    cards = _cards(records, summary)
    html = render("report.html.j2", summary=summary, cards=cards, plot_uri=plot_uri,
                  title=display_name(summary["data"]), families=sorted({c["family"] for c in cards}),
                  modes=list(summary["modes"]),
                  outcomes=["correct", "wrong", "refused"])
    Path(path).write_text(html, encoding="utf-8")
    return Path(path)
