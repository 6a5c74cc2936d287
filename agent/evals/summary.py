"""From episode records to metrics: per mode, per family, by number of samples; and run comparison.

A question's answer in a mode is the majority vote of its samples (``metrics.majority_vote``).
``accuracy``, ``em`` and ``f1`` score that voted answer; ``sample_accuracy`` is the mean over single
samples; ``pass@k`` is the unbiased estimate from the samples; ``by_samples[k]`` is the accuracy of
the vote over the first k samples. Rates over episodes: ``refusal_rate``, ``tool_calls_per_episode``;
``malformed_rate`` is malformed calls / all calls. Per question: ``tokens_per_question`` and
``seconds_per_question`` sum the samples.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from statistics import fmean
from typing import Any

from agent.config import dump_config
from agent.evals import metrics
from agent.evals.config import EvalConfig
from agent.evals.data import Example

__all__ = ["COMPARE_METRICS", "compare", "mode_metrics", "summarize", "vote_question"]

COMPARE_METRICS = ("accuracy", "sample_accuracy", "em", "f1", "refusal_rate", "tool_calls_per_episode",
                   "malformed_rate", "tokens_per_question", "seconds_per_question", "n_questions")


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return fmean(xs) if xs else 0.0


def _ks(n: int) -> list[int]:
    """pass@k reported for k = 1, 2, 4, ... and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def vote_question(samples: list[dict[str, Any]], k: int | None = None) -> dict[str, Any]:
    """The voted answer of one question's samples (the first ``k`` when given) and its scores."""
    use = sorted(samples, key=lambda r: r["sample"])[:k]
    first = use[0]
    pred, votes = metrics.majority_vote(r["pred"] for r in use)
    gold, answerable = first["gold"], first["answerable"]
    return {"pred": pred, "votes": votes, "n": len(use),
            "correct": metrics.is_correct(pred, gold, answerable),
            "em": metrics.exact_match(pred, gold), "f1": metrics.token_f1(pred, gold),
            "refusal": metrics.is_refusal(pred)}


def _group(records: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """mode -> question id -> sample records."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r["mode"]][r["id"]].append(r)
    return out


def _pass_at(questions: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    n_min = min((len(s) for s in questions.values()), default=0)
    if n_min == 0:
        return {}
    return {f"pass@{k}": _mean(metrics.pass_at_k(len(s), sum(r["correct"] for r in s), k)
                               for s in questions.values()) for k in _ks(n_min)}


def _by_samples(questions: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    n_min = min((len(s) for s in questions.values()), default=0)
    return {str(k): _mean(float(vote_question(s, k)["correct"]) for s in questions.values())
            for k in range(1, n_min + 1)}


def mode_metrics(questions: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Metrics of one mode from its question id -> sample records."""
    episodes = [r for s in questions.values() for r in s]
    votes = [vote_question(s) for s in questions.values()]
    calls = sum(r["n_tool_calls"] for r in episodes)
    return {
        "n_questions": len(questions), "n_episodes": len(episodes),
        "accuracy": _mean(float(v["correct"]) for v in votes),
        "sample_accuracy": _mean(float(r["correct"]) for r in episodes),
        "em": _mean(v["em"] for v in votes), "f1": _mean(v["f1"] for v in votes),
        **_pass_at(questions),
        "by_samples": _by_samples(questions),
        "refusal_rate": _mean(float(r["refusal"]) for r in episodes),
        "tool_calls_per_episode": calls / len(episodes) if episodes else 0.0,
        "malformed_rate": sum(r["n_malformed"] for r in episodes) / calls if calls else 0.0,
        "tokens_per_question": _mean(sum(r["n_tokens"] for r in s) for s in questions.values()),
        "seconds_per_question": _mean(sum(r["seconds"] for r in s) for s in questions.values()),
    }


def _by_family(questions: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    fams: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for qid, samples in questions.items():
        fams[samples[0]["family"]][qid] = samples
    out = {}
    for fam, qs in sorted(fams.items()):
        m = mode_metrics(qs)
        out[fam] = {k: m[k] for k in ("n_questions", "accuracy", "f1", "tool_calls_per_episode")}
    return out


def summarize(records: list[dict[str, Any]], examples: list[Example], cfg: EvalConfig) -> dict[str, Any]:
    """The run summary written to ``summary.json``."""
    grouped = _group(records)
    modes = {}
    for mode in cfg.modes:
        qs = grouped.get(mode, {})
        modes[mode] = {**mode_metrics(qs), "by_family": _by_family(qs)}
    model = next((r["trajectory"].get("model", "") for r in records), "")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": cfg.data, "model": model or cfg.runtime.model, "samples": cfg.samples,
        "n_questions": len(examples), "families": sorted({ex.family for ex in examples}),
        "modes": modes, "config": dump_config(cfg),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{mode, metric, a, b, delta}`` for every mode in both summaries (modes in one only get
    ``None`` on the other side)."""
    rows = []
    modes = list(a.get("modes", {})) + [m for m in b.get("modes", {}) if m not in a.get("modes", {})]
    for mode in modes:
        ma, mb = a["modes"].get(mode, {}), b["modes"].get(mode, {})
        keys = list(COMPARE_METRICS) + sorted({k for k in (*ma, *mb) if k.startswith("pass@")})
        for key in keys:
            va, vb = ma.get(key), mb.get(key)
            delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            rows.append({"mode": mode, "metric": key, "a": va, "b": vb, "delta": delta})
    return rows
