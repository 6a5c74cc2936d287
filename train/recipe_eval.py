"""The recipe's evaluation: base vs adapter, per family, training-style vs held-out phrasings.

Every figure is an ``agent eval`` run (greedy, llama.cpp, the default Q4_1 model with or without the
adapter), so each can be rerun alone from the commands in ``eval.md``. Suites:

- ``tasks-train`` / ``tasks-heldout`` / ``tasks-fresh`` / ``tasks-fresh2`` / ``tasks-fresh3``: every tool family
  (``agent.evals.tasks.TOOL_FAMILIES``) in training-style phrasings with python, held-out phrasings
  with python and without tools, and the later held-out sets (``fresh``, ``fresh2``, ``fresh3``)
  with python;
- ``plain-train`` / ``plain-heldout``: questions that need no tool, with the tools offered
  (python+search where a search index exists, else python): the tool-call rate is the figure;
- ``multihop-*``: the held-out HotpotQA/MuSiQue questions with local search and closed-book.

Questions come from eval seed 0; training data uses seeds 1000+ and only training phrasings.

``agent train compare --runs A,B`` (``compare_runs``) sets such evals side by side: each held-out set
as questions answered of questions asked, the held-out sets pooled per family, the other suites.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends import BackendConfig
from agent.errors import ConfigError
from agent.evals import EvalConfig, run_eval
from agent.evals.tasks import PHRASINGS, TOOL_FAMILIES
from agent.runtime import RuntimeConfig

__all__ = ["CompareConfig", "compare_runs", "heldout_pooled", "run_recipe_eval", "suites", "table"]

EVAL_SEED = 0
_SPLITS = tuple(p for p in PHRASINGS if p != "all")  # train, heldout, fresh, fresh2, fresh3
_HELDOUT = tuple(p for p in _SPLITS if p != "train")  # every set of phrasings training never saw
CONCURRENCY = 8  # episodes decoded together (llama.cpp multi-sequence batching)


def suites(n: int, heldout: list[Path], index: Path | None) -> list[dict[str, Any]]:
    k = len(TOOL_FAMILIES)
    plain_mode = "python+search" if index else "python"
    out = [
        *({"name": f"tasks-{p}", "data": f"gen:all@{p}", "limit": n * k,
           "modes": ["python", "none"] if p == "heldout" else ["python"]} for p in _SPLITS),
        {"name": "plain-train", "data": "gen:plain@train", "limit": 2 * n, "modes": [plain_mode]},
        {"name": "plain-heldout", "data": "gen:plain@heldout", "limit": 2 * n, "modes": [plain_mode]},
    ]
    if index:
        out += [{"name": f"multihop-{p.name.split('.heldout-')[-1].removesuffix('.json')}", "data": str(p),
                 "limit": 0, "modes": ["search", "none"]} for p in heldout]
    return out


def _runtime(adapter: Path | None, index: Path | None, max_new_tokens: int) -> Any:
    return RuntimeConfig(model="default", temperature=0.0, seed=EVAL_SEED, max_new_tokens=max_new_tokens,
                         llm=BackendConfig(adapter=str(adapter) if adapter else "none", n_seq=CONCURRENCY),
                         tool_config={"search": {"index": str(index)}} if index else {})


def _malformed_episodes(path: Path) -> dict[str, float]:
    """Per mode: the share of episodes with at least one malformed call."""
    from collections import defaultdict

    n, bad = defaultdict(int), defaultdict(int)
    with path.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            n[r["mode"]] += 1
            bad[r["mode"]] += r["n_malformed"] > 0
    return {m: bad[m] / n[m] for m in n}


def _tool_episode_rate(path: Path) -> dict[str, dict[str, float]]:
    """Per mode and family: the share of episodes with at least one tool call."""
    from collections import defaultdict

    n, called = defaultdict(int), defaultdict(int)
    with path.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            n[r["mode"], r["family"]] += 1
            called[r["mode"], r["family"]] += r["n_tool_calls"] > 0
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (mode, fam), k in n.items():
        out[mode][fam] = called[mode, fam] / k
    return dict(out)


def run_recipe_eval(out: Path, adapter: Path, n: int, heldout: list[Path], index: Path | None,
                    with_base: bool = True, max_new_tokens: int = 512, n_base: int = 0) -> dict[str, Any]:
    """Evaluate the adapter on ``n`` questions per family and split, the base (the 'before' rows)
    on ``n_base`` (default ``n``): the base rarely answers these, and rambles to the token limit."""
    models = ([("base", None, n_base or n)] if with_base else []) + [("adapter", adapter, n)]
    summary: dict[str, Any] = {}
    for model, path, k in models:
        for s in suites(k, heldout, index):
            cfg = EvalConfig(data=s["data"], limit=s["limit"], modes=s["modes"], out=str(out / model / s["name"]),
                             concurrency=CONCURRENCY, report=False,
                             runtime=_runtime(path, index, max_new_tokens))
            res = run_eval(cfg)
            episodes = Path(cfg.out) / "episodes.jsonl"
            malformed, tool_rate = _malformed_episodes(episodes), _tool_episode_rate(episodes)  # once per suite
            summary.setdefault(model, {})[s["name"]] = {
                mode: {"accuracy": m["accuracy"], "em": m["em"], "n_questions": m["n_questions"],
                       "tool_calls_per_episode": m["tool_calls_per_episode"],
                       "seconds_per_question": m["seconds_per_question"],
                       "malformed_episodes": malformed.get(mode, 0.0),
                       "tool_episodes": tool_rate.get(mode, {}),
                       "by_family": {f: v["accuracy"] for f, v in m["by_family"].items()},
                       "family_n": {f: v["n_questions"] for f, v in m["by_family"].items()}}
                for mode, m in res["modes"].items()}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = table(summary, {m: k for m, _, k in models})
    md += "\nThe adapter over every held-out set, pooled per family (`agent train compare`):\n\n"
    md += _compare_table(["adapter"], [summary["adapter"]])
    (out / "eval.md").write_text(md)
    return {"summary": summary, "table": str(out / "eval.md")}


def table(summary: dict[str, Any], n: dict[str, int]) -> str:
    """The before/after markdown table: rows family x phrasing, columns model x mode."""
    models = list(summary)
    per = ", ".join(f"{m} {k}" for m, k in n.items())
    lines = [f"Greedy, llama.cpp, default Q4_1 model; questions per family and phrasing split: {per} "
             f"(eval seed {EVAL_SEED}). Accuracy per family; below, per suite.", ""]
    head = ["family", "phrasing"] + [f"{m} {mode}" for m in models for mode in ("python", "none")]
    lines += [_row(head), "|" + " --- |" * len(head)]
    for split in _SPLITS:
        name = f"tasks-{split}"
        fams = sorted({f for m in models for f in summary[m].get(name, {}).get("python", {}).get("by_family", {})})
        for fam in fams + ["all"]:
            row = [fam, split]
            for m in models:
                for mode in ("python", "none"):
                    r = summary[m].get(name, {}).get(mode)
                    if r is None:
                        row.append("-")
                        continue
                    acc = r["accuracy"] if fam == "all" else r["by_family"].get(fam)
                    row.append("-" if acc is None else f"{acc:.2f}")
            lines.append(_row(row))
    lines += ["", "| suite | model | mode | accuracy / EM | tool-call episodes | malformed episodes | s/question |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        for name, modes in summary[m].items():
            for mode, r in modes.items():
                score = f"{r['accuracy']:.2f} / {r['em']:.2f}"
                lines.append(f"| {name} | {m} | {mode} | {score} | {_tool_share(r):.2f} | "
                             f"{r['malformed_episodes']:.3f} | {r['seconds_per_question']:.2f} |")
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _tool_share(r: dict[str, Any]) -> float:
    """The share of a suite's episodes with a tool call (the mean over its families)."""
    return sum(r["tool_episodes"].values()) / max(len(r["tool_episodes"]), 1)


def _family_counts(r: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per family of one suite's mode: (questions answered correctly, questions). Greedy, one sample
    per question. Summaries written before ``family_n`` was recorded held the same number of
    questions in every family (``limit`` = per family x families)."""
    n = r.get("family_n") or {f: r["n_questions"] // max(len(r["by_family"]), 1) for f in r["by_family"]}
    return {f: (round(acc * n[f]), n[f]) for f, acc in r["by_family"].items()}


def heldout_pooled(model: dict[str, Any], sets: tuple[str, ...] = _HELDOUT) -> dict[str, tuple[int, int]]:
    """Per family, summed over the held-out sets ``sets`` (with python): (correct, questions). The
    acceptance figure: each family on phrasings training never saw, over every such set."""
    out: dict[str, tuple[int, int]] = {}
    for split in sets:
        r = model.get(f"tasks-{split}", {}).get("python")
        for fam, (c, n) in (_family_counts(r) if r else {}).items():
            c0, n0 = out.get(fam, (0, 0))
            out[fam] = (c0 + c, n0 + n)
    return out


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list, metadata={
        "help": "recipe evals, comma-separated: a run dir (runs/recipe-v9), its eval dir or eval.json, or an "
                "adapter card (agent/adapters/smollm2-tools.json)"})
    out: str = field(default="", metadata={"help": "also write the table to this markdown file"})
    diff: bool = field(default=False, metadata={
        "help": "also list each held-out question one of two runs answered right and the other wrong, with both "
                "answers (from the runs' episodes.jsonl: give run or eval dirs)"})

    def __post_init__(self) -> None:
        if isinstance(self.runs, str):
            self.runs = [r for r in self.runs.split(",") if r]
        if not self.runs:
            raise ConfigError("give the runs to compare: --runs A,B")
        if self.diff and len(self.runs) != 2:
            raise ConfigError(f"--diff compares two runs, not {len(self.runs)}")


def _load_adapter_summary(path: str) -> dict[str, Any]:
    p = Path(path)
    for cand in (p / "eval" / "eval.json", p / "eval.json", p):
        if cand.is_file():
            try:
                doc = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConfigError(f"{cand}: not a readable eval summary ({e})") from None
            summary = doc.get("eval", doc) if isinstance(doc, dict) else None  # a card holds it under "eval"
            if not isinstance(summary, dict) or not isinstance(summary.get("adapter"), dict):
                raise ConfigError(f"{cand}: no adapter results (a recipe's eval.json or an adapter card)")
            return summary["adapter"]
    raise ConfigError(f"{path}: no eval.json there (run the recipe's eval stage first)")


def _same_questions(models: list[dict[str, Any]], suite: str, mode: str) -> bool:
    counts = [{f: n for f, (_, n) in _family_counts(m[suite][mode]).items()}
              for m in models if mode in m.get(suite, {})]
    return len(counts) == len(models) and all(c == counts[0] for c in counts)


def compare_runs(cfg: CompareConfig) -> str:
    """A markdown table of one or more recipe evals side by side: each set of phrasings (correct of
    questions, with python), the held-out sets pooled per family, the no-tool and multi-hop suites.
    A set counts towards the totals only where every run asked it the same number of questions per
    family; the rest show '-'."""
    models = [_load_adapter_summary(r) for r in cfg.runs]
    try:
        md = _compare_table(cfg.runs, models)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{', '.join(cfg.runs)}: not recipe eval summaries ({type(e).__name__}: {e})") from None
    if cfg.diff:
        md += _diff_table(*cfg.runs)
    if cfg.out:
        try:
            Path(cfg.out).write_text(md, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot write {cfg.out}: {e.strerror or e}") from None
    return md


def _python_episodes(run: str, split: str) -> dict[str, dict[str, Any]]:
    """The with-python episodes of one set of a recipe eval, by question id."""
    for base in (Path(run) / "eval" / "adapter", Path(run) / "adapter"):
        path = base / f"tasks-{split}" / "episodes.jsonl"
        if not path.is_file():
            continue
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return {r["id"]: r for r in rows if r.get("mode") == "python"}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not readable episodes ({type(e).__name__}: {e})") from None
    raise ConfigError(f"{run}: no episodes for tasks-{split} (--diff needs a run or eval dir, not a card)")


def _diff_table(a: str, b: str) -> str:
    """Each held-out question (same id and text in both runs) that one run answered right and the
    other wrong: set, family, question, gold, each run's answer."""
    def cell(text: Any, width: int = 90) -> str:
        t = " ".join(str(text).split()).replace("|", "\\|")
        return t if len(t) <= width else t[:width - 3] + "..."

    def answered(e: dict[str, Any]) -> str:
        return f"{cell(e.get('pred'), 30)} ({'right' if e.get('correct') else 'wrong'})"

    lines = ["", f"Held-out questions the two runs answered differently (with python; A = {a}, B = {b}):", "",
             "| set | family | question | gold | A | B |", "| --- | --- | --- | --- | --- | --- |"]
    only = [0, 0]
    for split in _HELDOUT:
        ea, eb = _python_episodes(a, split), _python_episodes(b, split)
        for qid in sorted(ea.keys() & eb.keys()):
            x, y = ea[qid], eb[qid]
            if bool(x.get("correct")) == bool(y.get("correct")) or x.get("question") != y.get("question"):
                continue
            only[0 if x.get("correct") else 1] += 1
            lines.append(_row([split, str(x.get("family", "")), cell(x["question"]), cell(", ".join(x.get("gold", []))),
                               answered(x), answered(y)]))
    lines += ["", f"Right only in A: {only[0]}; right only in B: {only[1]}."]
    return "\n".join(lines) + "\n"


def _compare_table(runs: list[str], models: list[dict[str, Any]]) -> str:
    head = ["", *runs]
    lines = [_row(head), "|" + " --- |" * len(head)]

    def cell(c: int, n: int) -> str:
        return f"{c}/{n} ({c / n:.3f})" if n else "-"

    def total(counts: dict[str, tuple[int, int]]) -> str:
        return cell(sum(c for c, _ in counts.values()), sum(n for _, n in counts.values()))

    shared = [s for s in _SPLITS if _same_questions(models, f"tasks-{s}", "python")]
    for split in _SPLITS:
        name = "training-style" if split == "train" else f"held-out `{split}`"
        row = [name]
        for m in models:
            row.append(total(_family_counts(m[f"tasks-{split}"]["python"]) if split in shared else {}))
        lines.append(_row(row))
    held = tuple(s for s in shared if s != "train")
    pooled = [heldout_pooled(m, held) for m in models]
    row = [f"**held-out total** ({', '.join(held) or 'no set in common'})"]
    row += [f"**{total(p)}**" for p in pooled]
    lines.append(_row(row))
    for fam in sorted({f for p in pooled for f in p}):
        lines.append(_row([f"held-out {fam}"] + [cell(*p.get(fam, (0, 0))) for p in pooled]))
    for suite in sorted({s for m in models for s in m if not s.startswith("tasks-")}):
        for mode in sorted({md for m in models for md in m.get(suite, {})}):
            row = [f"{suite}, {mode}"]
            for m in models:
                r = m.get(suite, {}).get(mode)
                if r is None:
                    row.append("-")
                    continue
                row.append(f"{r['accuracy']:.2f} / {r['em']:.2f}, {_tool_share(r):.2f}, {r['malformed_episodes']:.3f}")
            lines.append(_row(row))
    lines += ["", "Task sets: questions answered correctly (greedy, with python). Other suites: accuracy / EM, "
              "share of episodes with a tool call, share with a malformed call."]
    return "\n".join(lines) + "\n"
