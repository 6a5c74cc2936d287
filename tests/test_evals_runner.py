"""The eval runner with a scripted model: modes, votes, resumption, the on-the-fly search index, CLI."""

import argparse
import asyncio
import json
import re
import sys
import types
from pathlib import Path

import pytest

import tools.base
from agent.backends.scripted import ScriptedBackend
from agent.errors import ConfigError
from agent.evals import EvalConfig, evaluate, load_episodes, run_eval
from agent.evals.cli import add_parser, config_from_args, handler
from agent.runtime import RuntimeConfig
from agent.trajectory import Trajectory
from tools.base import FunctionTool, ToolOutput

FIX = Path(__file__).parent / "fixtures" / "evals"


def calc(expr: str) -> str:
    """Multiply two integers written as a*b."""
    a, b = expr.split("*")
    return str(int(a) * int(b))


@pytest.fixture
def calc_tool(monkeypatch):
    t = FunctionTool(calc)
    monkeypatch.setitem(tools.base._REGISTRY, "calc", lambda **_: t)
    return t


def times_script(ctx: str) -> str:
    """Uses calc when the system prompt offers it, then answers with its result; else guesses 42."""
    turn = ctx.rsplit("<|user|>", 1)[1]
    if "- calc:" not in ctx:
        return "I think <answer_start>42<answer_end>"
    results = re.findall(r"<result_start>\n(.*?)\n<result_end>", turn, re.DOTALL)
    if not results:
        a, b = re.findall(r"\d+", turn)[:2]
        return f"Let me compute. <calc_start>{a}*{b}<calc_end>"
    return f"<answer_start>{results[-1]}<answer_end>"


def write_times_data(path: Path, n: int) -> Path:
    rows = [{"id": f"q{i}", "question": f"What is {100 + i} times {7 + i}?", "answer": str((100 + i) * (7 + i)),
             "family": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_two_modes_end_to_end(tmp_path, calc_tool):
    data = write_times_data(tmp_path / "times.jsonl", 4)
    cfg = EvalConfig(data=str(data), out=str(tmp_path / "run"), modes=["none", "calc"], concurrency=3)
    summary = await evaluate(cfg, backend=ScriptedBackend(times_script))
    none, tool = summary["modes"]["none"], summary["modes"]["calc"]
    assert (none["accuracy"], tool["accuracy"]) == (0.0, 1.0)
    assert (none["tool_calls_per_episode"], tool["tool_calls_per_episode"]) == (0.0, 1.0)
    assert tool["malformed_rate"] == 0.0 and tool["n_questions"] == 4 and tool["pass@1"] == 1.0
    assert tool["by_family"] == {"even": {"n_questions": 2, "accuracy": 1.0, "f1": 1.0, "tool_calls_per_episode": 1.0},
                                 "odd": {"n_questions": 2, "accuracy": 1.0, "f1": 1.0, "tool_calls_per_episode": 1.0}}
    assert tool["tokens_per_question"] > none["tokens_per_question"] > 0
    recs = lines(tmp_path / "run" / "episodes.jsonl")
    assert len(recs) == 8 and {(r["mode"], r["correct"]) for r in recs} == {("none", False), ("calc", True)}
    rec = next(r for r in recs if r["mode"] == "calc")
    traj = Trajectory.from_dict(rec["trajectory"])
    assert traj.tool_calls[0].tool == "calc" and traj.answer == rec["pred"] == rec["gold"][0]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["modes"]["calc"]["accuracy"] == 1.0 and Path(saved["files"]["report"]).exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["modes"] == ["none", "calc"]


def vote_script():
    """Per question: sample 0 answers wrong, samples 1 and 2 right (run with concurrency 1)."""
    calls = {"n": 0}

    def script(ctx: str) -> str:
        k = calls["n"] % 3
        calls["n"] += 1
        a, b = re.findall(r"\d+", ctx.rsplit("<|user|>", 1)[1])[:2]
        return f"<answer_start>{int(a) * int(b) if k else 0:,}<answer_end>"

    return script


async def test_majority_vote_pass_at_k_and_accuracy_by_samples(tmp_path):
    data = write_times_data(tmp_path / "times.jsonl", 2)
    cfg = EvalConfig(data=str(data), out=str(tmp_path / "run"), samples=3, runtime=RuntimeConfig(temperature=0.7))
    m = (await evaluate(cfg, backend=ScriptedBackend(vote_script())))["modes"]["none"]
    assert m["accuracy"] == 1.0  # 2 of 3 right ("10,700" votes with "10700")
    assert m["sample_accuracy"] == pytest.approx(2 / 3) and m["pass@1"] == pytest.approx(2 / 3)
    assert m["pass@2"] == 1.0 and m["pass@3"] == 1.0
    assert m["by_samples"] == {"1": 0.0, "2": 0.0, "3": 1.0}  # a 1-1 tie goes to the earliest sample
    seeds = {r["seed"] for r in lines(tmp_path / "run" / "episodes.jsonl")}
    assert len(seeds) == 6


async def test_a_cancelled_run_resumes_without_duplicates(tmp_path, calc_tool, caplog):
    data = write_times_data(tmp_path / "times.jsonl", 8)
    cfg = EvalConfig(data=str(data), out=str(tmp_path / "run"), modes=["none", "calc"], concurrency=2)
    episodes = tmp_path / "run" / "episodes.jsonl"
    task = asyncio.create_task(evaluate(cfg, backend=ScriptedBackend(times_script, token_delay_s=0.001)))
    while not episodes.exists() or len(episodes.read_text().splitlines()) < 5:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first = lines(episodes)
    assert 5 <= len(first) < 16
    with episodes.open("a") as f:
        f.write('{"id": "q7", "mode": "calc", "sam')  # a run killed mid-write
    second = ScriptedBackend(times_script)
    with caplog.at_level("INFO", logger="splice.evals"):
        summary = await evaluate(cfg, backend=second)
    assert f"resumed from {episodes}: {len(first)} of 16" in caplog.text  # shown by `agent -v eval`
    recs = lines(episodes)
    keys = [(r["id"], r["mode"], r["sample"]) for r in recs]
    assert len(keys) == len(set(keys)) == 16
    assert recs[: len(first)] == first
    assert len(second.prompts) == 16 - len(first)  # only the missing episodes ran
    assert summary["modes"]["calc"]["accuracy"] == 1.0 and summary["modes"]["none"]["n_questions"] == 8


async def test_resume_refuses_other_settings_unless_overwrite(tmp_path):
    data = write_times_data(tmp_path / "times.jsonl", 2)
    out = str(tmp_path / "run")
    await evaluate(EvalConfig(data=str(data), out=out, report=False), backend=ScriptedBackend(times_script))
    other = EvalConfig(data=str(data), out=out, report=False, runtime=RuntimeConfig(seed=5))
    with pytest.raises(ConfigError, match="seed"):
        await evaluate(other, backend=ScriptedBackend(times_script))
    fresh = ScriptedBackend(times_script)
    await evaluate(EvalConfig(data=str(data), out=out, report=False, runtime=RuntimeConfig(seed=5), overwrite=True),
                   backend=fresh)
    assert len(fresh.prompts) == 2 and len(load_episodes(tmp_path / "run" / "episodes.jsonl")) == 2


def test_run_eval_matches_evaluate(tmp_path, calc_tool):
    data = write_times_data(tmp_path / "times.jsonl", 3)
    kw = {"data": str(data), "modes": ["none", "calc"], "report": False}
    sync = run_eval(EvalConfig(out=str(tmp_path / "a"), **kw), backend=ScriptedBackend(times_script))
    asy = asyncio.run(evaluate(EvalConfig(out=str(tmp_path / "b"), **kw), backend=ScriptedBackend(times_script)))
    drop = ("seconds_per_question",)
    for mode in ("none", "calc"):
        assert {k: v for k, v in sync["modes"][mode].items() if k not in drop} == \
               {k: v for k, v in asy["modes"][mode].items() if k not in drop}


async def test_generated_tasks_run_without_a_file(tmp_path):
    cfg = EvalConfig(data="gen:compare,count", limit=4, out=str(tmp_path / "gen"), report=False)
    summary = await evaluate(cfg, backend=ScriptedBackend(["<answer_start>1<answer_end>"]))
    assert summary["n_questions"] == 4 and summary["families"] == ["compare", "count"]
    with pytest.raises(ConfigError, match="unknown task families"):
        await evaluate(EvalConfig(data="gen:poetry", out=str(tmp_path / "x")), backend=ScriptedBackend([]))


class FakeSearch(tools.base.Tool):
    """Stands in for tools.search.SearchTool: reads the corpus the eval wrote next to the index."""

    name = "search"
    description = "search the passages"

    def __init__(self, backend="local", index="", **_):
        self.index = Path(index)

    async def call(self, arg: str) -> ToolOutput:
        docs = json.loads(self.index.read_text())
        hits = [d["text"] for d in docs if any(w.lower() in d["text"].lower() for w in arg.split())]
        return ToolOutput("\n".join(hits[:2]) or "no results")


def fake_build_index(paths, out, **_):
    docs = [json.loads(x) for x in Path(paths[0]).read_text().splitlines()]
    Path(out).write_text(json.dumps(docs))


def search_script(ctx: str) -> str:
    turn = ctx.rsplit("<|user|>", 1)[1]
    if "<result_start>" not in turn:
        return "<search_start>capital Netherlands<search_end>" if "Rhine" in turn else "<search_start>mammal<search_end>"
    found = turn.split("<result_start>", 1)[1]
    return "<answer_start>Amsterdam<answer_end>" if "Amsterdam" in found else "<answer_start>yes<answer_end>"


async def test_search_mode_indexes_the_datasets_own_passages(tmp_path, monkeypatch):
    fake = types.ModuleType("tools.search")
    fake.build_index, fake.SearchTool, fake.TOOL = fake_build_index, FakeSearch, FakeSearch
    monkeypatch.setitem(sys.modules, "tools.search", fake)
    cfg = EvalConfig(data=str(FIX / "hotpotqa.json"), out=str(tmp_path / "hp"), modes=["search"], report=False)
    summary = await evaluate(cfg, backend=ScriptedBackend(search_script))
    assert summary["modes"]["search"]["accuracy"] == 1.0
    corpus = lines(tmp_path / "hp" / "corpus.jsonl")
    assert [d["title"] for d in corpus] == ["Rhine", "Netherlands", "Cat", "Dog"]
    assert (tmp_path / "hp" / "index.sqlite").exists()
    gsm = EvalConfig(data=str(FIX / "gsm8k.jsonl"), out=str(tmp_path / "g"), modes=["search"])
    with pytest.raises(ConfigError, match="--corpus"):
        await evaluate(gsm, backend=ScriptedBackend([]))


def test_unanswerable_questions_count_refusals(tmp_path):
    script = ["<answer_start>I don't know<answer_end>"]
    cfg = EvalConfig(data=str(FIX / "musique.jsonl"), out=str(tmp_path / "m"), report=False)
    m = run_eval(cfg, backend=ScriptedBackend(lambda ctx: script[0]))["modes"]["none"]
    assert m["refusal_rate"] == 1.0 and m["accuracy"] == 0.5  # right on the unanswerable one only


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agent")
    add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_flags_build_the_config():
    ns = parse(["eval", "gen:arith", "--tools", "none", "--tools", "python,search", "--samples", "3",
                "--temperature", "0.7", "--limit", "4", "--max-new-tokens", "64", "--no-report"])
    cfg = config_from_args(ns)
    assert cfg.modes == ["none", "python+search"] and cfg.samples == 3 and cfg.limit == 4
    assert cfg.runtime.temperature == 0.7 and cfg.runtime.max_new_tokens == 64 and cfg.report is False
    assert config_from_args(parse(["eval", "x.jsonl", "--modes", "none,python"])).modes == ["none", "python"]
    assert ns.func is handler


def test_cli_reports_config_errors_and_compares_runs(tmp_path, capsys):
    from agent.cli import main

    assert main(["eval", "gen:arith", "--samples", "2"]) == 2
    assert "--temperature 0.7" in capsys.readouterr().err
    assert main(["eval"]) == 2 and "--compare" in capsys.readouterr().err
    a = {"modes": {"none": {"accuracy": 0.25, "f1": 0.5, "pass@1": 0.25}}}
    b = {"modes": {"none": {"accuracy": 0.5, "f1": 0.5}, "python": {"accuracy": 0.75}}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert handler(parse(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])) == 0
    out = capsys.readouterr().out
    assert "+0.250" in out and "python" in out and "pass@1" in out


def test_config_validation():
    with pytest.raises(ConfigError, match="--temperature"):
        EvalConfig(data="gen:arith", samples=4)
    with pytest.raises(ConfigError, match="distinct"):
        EvalConfig(data="gen:arith", modes=["python", "python"])
    assert EvalConfig(data="gen:arith", modes="none,python+search").modes == ["none", "python+search"]
    assert EvalConfig(data="gen:arith,count").out_dir == Path("runs/eval-arith-count")
    assert EvalConfig(data="gen:arith", runtime={"temperature": 0.5}, samples=2).runtime.temperature == 0.5


async def test_search_mode_with_the_real_local_index(tmp_path):
    pytest.importorskip("tools.search", reason="tools.search (local FTS5 index) is not available")
    cfg = EvalConfig(data=str(FIX / "hotpotqa.json"), out=str(tmp_path / "hp"), modes=["search"], report=False)
    summary = await evaluate(cfg, backend=ScriptedBackend(search_script))
    assert summary["modes"]["search"]["accuracy"] == 1.0
    rec = next(r for r in lines(tmp_path / "hp" / "episodes.jsonl") if r["id"] == "hp1")
    assert "Amsterdam" in rec["trajectory"]["tool_calls"][0]["result"]
