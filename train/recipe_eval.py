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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.backends import BackendConfig
from agent.evals import EvalConfig, run_eval
from agent.evals.tasks import PHRASINGS, TOOL_FAMILIES
from agent.runtime import RuntimeConfig

__all__ = ["run_recipe_eval", "suites", "table"]

EVAL_SEED = 0
_SPLITS = tuple(p for p in PHRASINGS if p != "all")  # train, heldout, fresh, fresh2, fresh3
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
                       "by_family": {f: v["accuracy"] for f, v in m["by_family"].items()}}
                for mode, m in res["modes"].items()}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = table(summary, {m: k for m, _, k in models})
    (out / "eval.md").write_text(md)
    return {"summary": summary, "table": str(out / "eval.md")}


def table(summary: dict[str, Any], n: dict[str, int]) -> str:
    """The before/after markdown table: rows family x phrasing, columns model x mode."""
    models = list(summary)
    per = ", ".join(f"{m} {k}" for m, k in n.items())
    lines = [f"Greedy, llama.cpp, default Q4_1 model; questions per family and phrasing split: {per} "
             f"(eval seed {EVAL_SEED}). Accuracy per family; below, per suite.", ""]
    head = ["family", "phrasing"] + [f"{m} {mode}" for m in models for mode in ("python", "none")]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
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
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| suite | model | mode | accuracy / EM | tool-call episodes | malformed episodes | s/question |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        for name, modes in summary[m].items():
            for mode, r in modes.items():
                tool = sum(r["tool_episodes"].values()) / max(len(r["tool_episodes"]), 1)
                score = f"{r['accuracy']:.2f} / {r['em']:.2f}"
                lines.append(f"| {name} | {m} | {mode} | {score} | {tool:.2f} | {r['malformed_episodes']:.3f} | "
                             f"{r['seconds_per_question']:.2f} |")
    return "\n".join(lines) + "\n"
