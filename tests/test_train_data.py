"""Training data synthesis: plans, execution with tools, checks, determinism, probe targets."""

from __future__ import annotations

import json
import random
import re

import pytest

from agent.errors import ConfigError
from tools.base import FunctionTool, ToolOutput
from train.data import (
    TASK_FAMILIES,
    DataConfig,
    Plan,
    answer,
    arith_plans,
    build_plans,
    call,
    cite,
    execute,
    gsm8k_plan,
    hop_plans,
    hotpot_plan,
    musique_plan,
    notool_plans,
    number_clauses,
    plain_plans,
    read_jsonl,
    scene_plans,
    synthesize,
    text,
    write_jsonl,
)
from train.probe import QAPair, probe_plans


def _py(code: str) -> ToolOutput:
    """A stand-in for the sandbox in unit tests: runs trusted test code in-process."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})  # noqa: S102 - test-only fake of the python tool on code this test wrote
    return ToolOutput(buf.getvalue())


PASSAGES = {
    "Journal of Psychotherapy Integration": "The Journal of Psychotherapy Integration is published by the "
                                             "American Psychological Association.",
    "American Psychological Association": "The first president of the American Psychological Association "
                                          "was G. Stanley Hall.",
}


def _search(query: str) -> ToolOutput:
    hits = [(t, p) for t, p in PASSAGES.items() if any(w.lower() in p.lower() for w in query.split()[-3:])]
    # the local search tool's format: "[rank] title (source)", the passage on the next line
    return ToolOutput("\n\n".join(f"[{i}] {t} (test)\n{p}" for i, (t, p) in enumerate(hits, 1)) or "no results")


@pytest.fixture
def tools():
    return {"python": FunctionTool(_py, name="python"), "search": FunctionTool(_search, name="search")}


async def test_execute_splices_real_results_and_fills_answer(tools):
    plan = Plan("t-1", "arith", "What is 1234 * 5678?",
                [text("Let me compute.\n"), call("python", "print(1234 * 5678)"), text("It is {r}.\n"), answer("{r}")],
                "7006652", check=lambda res: res[-1].strip() == "7006652")
    ex = await execute(plan, tools, "SYSTEM")
    parts = ex["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "call", "result", "text", "answer"]
    assert parts[2]["text"] == "7006652\n"
    assert parts[3]["text"] == "It is 7006652.\n" and parts[4]["text"] == "7006652"
    assert ex["messages"][0] == {"role": "system", "content": "SYSTEM"}


async def test_execute_drops_examples_the_tool_contradicts(tools):
    plan = Plan("t-2", "arith", "q", [call("python", "print(2 + 2)"), answer("{r}")], "5",
                check=lambda res: res[-1].strip() == "5")
    assert await execute(plan, tools, "S") is None
    failing = FunctionTool(lambda code: ToolOutput("Traceback ...", error=True), name="python")
    assert await execute(Plan("t-3", "arith", "q", [call("python", "1/0")], "x"), {"python": failing}, "S") is None


async def test_composed_arithmetic_runs_agrees_with_gold_and_shows_every_number(tools):
    """``train.scenes``: every expression kind, each question holding each of its numbers (as the
    intro lists them), the program's output the gold; ``scene_arith`` makes that share of the family."""
    plans = scene_plans(14, seed=3)
    assert {p.id for p in plans} == {f"arith-scene-3-{i}" for i in range(14)}
    from agent.evals.tasks import arith_question
    from train.scenes import FRAMES, MORE_FRAMES, SCENES, compose, generate

    examples = generate(14, 3)
    assert len({e.meta["kind"] for e in examples}) == 7 and [p.gold for p in plans] == [e.answer for e in examples]
    more = generate(280, 3, more=True)  # MORE_FRAMES drawn too, only with more=True
    assert any(int(e.meta["template"].rsplit("-", 1)[1]) >= len(FRAMES[e.meta["kind"]]) for e in more)
    assert all(int(e.meta["template"].rsplit("-", 1)[1]) < len(FRAMES[e.meta["kind"]]) for e in generate(280, 3))
    rng = random.Random(0)
    for kind in FRAMES:
        for frame in FRAMES[kind] + MORE_FRAMES[kind]:
            q, gold, meta = arith_question(rng, compose(frame, rng.choice(SCENES)), kind)
            shown = {n.replace(",", "") for n in re.findall(r"\d[\d,]*", q)}
            assert {meta[k] for k in "abcp" if k in meta} <= shown, q
            assert str(eval(meta["expr"])).removesuffix(".0") == gold  # noqa: S307 - our own digits
    rows = [await execute(p, tools, "S") for p in plans]
    assert all(r is not None for r in rows)
    mixed = build_plans(DataConfig(n_arith=10, n_count=0, n_compare=0, n_length=0, n_reverse=0, n_plain=0,
                                   scene_arith=0.4))
    assert sorted(p.id.startswith("arith-scene-") for p in mixed) == [False] * 6 + [True] * 4
    with pytest.raises(ConfigError, match="share"):
        DataConfig(scene_arith=1.5)


def test_arith_clauses_quote_the_question_as_read_holding_every_number_in_order():
    """``arith_clauses``: the sentence before the code quotes, verbatim from the question the model
    reads (reworded or not), the clauses that hold its numbers, every number once in its order, digit
    groups whole; off, the data is what it was (the shipped recipe's data does not use it)."""
    assert number_clauses("Share 2,193,818 stickers among 914 kids, then give 3.5 away. How many?") == [
        "Share 2,193,818 stickers among 914 kids", "then give 3.5 away"]
    assert number_clauses("No digits here.") == []
    cfg = dict(n_arith=60, n_count=0, n_compare=0, n_length=0, n_reverse=0, n_plain=0, n_fix=14, scene_arith=0.5)
    quoted = build_plans(DataConfig(**cfg, arith_clauses=True))
    bare = build_plans(DataConfig(**cfg))
    assert [p.question for p in quoted] == [p.question for p in bare]  # same questions, other intros
    arith = [p for p in quoted if p.family in ("arith", "fix") and "arith" in p.id]
    assert len(arith) >= 60
    for p, b in zip(quoted, bare):
        intro = p.parts[0]["text"]
        if p not in arith:
            assert intro == b.parts[0]["text"]
            continue
        clauses = re.findall(r'"([^"]+)"', intro.split(". ", 1)[0] + ".")
        assert clauses and all(c in p.question for c in clauses), (p.question, intro)
        in_quotes = re.findall(r"\d[\d,.]*\d|\d", " ".join(clauses))
        in_question = re.findall(r"\d[\d,.]*\d|\d", p.question)
        assert in_quotes == in_question, (p.question, intro)  # every number, once, in order
        assert b.parts[0]["text"].startswith(("The numbers are", "The question gives", "Numbers in the question"))


def test_scene_more_and_comma_leads_reach_the_plans_only_when_asked():
    """``DataConfig.scene_more`` / ``comma_leads`` reach ``build_plans``: composed questions from
    ``MORE_FRAMES`` ("helpers" occurs in no other frame) and questions opening with a comma lead-in;
    off (v11, the shipped recipe), neither, and the plans are what they were."""
    from train.phrasing import COMMA_LEADS
    from train.scenes import FRAMES

    assert not any("helpers" in f for frames in FRAMES.values() for f in frames)
    cfg = dict(n_arith=140, n_count=40, n_compare=0, n_length=0, n_reverse=40, n_plain=0, scene_arith=0.5)
    on = build_plans(DataConfig(**cfg, scene_more=True, comma_leads=True))
    off = build_plans(DataConfig(**cfg))
    assert [p.id for p in on] == [p.id for p in off]
    assert any("helpers" in p.question for p in on if p.id.startswith("arith-scene-"))
    assert sum(p.question.startswith(COMMA_LEADS) for p in on) >= 5
    assert not any("helpers" in p.question or p.question.startswith(COMMA_LEADS) for p in off)


def test_composed_arithmetic_holds_no_near_copy_of_a_held_out_template():
    """Every frame in every scene is further than a 0.8 difflib ratio from every held-out arithmetic
    template (the bound the fourth held-out set is held to), so held-out accuracy stays held-out."""
    import difflib

    from agent.evals.tasks import _REGISTRY
    from train.scenes import FRAMES, MORE_FRAMES, SCENES, compose

    held = [t.text.lower() for t in _REGISTRY["arith"].templates if t.split != "train"]
    composed = {compose(f, sc).lower() for table in (FRAMES, MORE_FRAMES) for frames in table.values()
                for f in frames for sc in SCENES}
    for h in held:
        m = difflib.SequenceMatcher(None, "", h)  # b fixed: its index is built once
        for q in composed:
            m.set_seq1(q)
            assert m.real_quick_ratio() < 0.8 or m.quick_ratio() < 0.8 or m.ratio() < 0.8, (q, h)


async def test_task_families_run_and_agree_with_gold(tools):
    for fam in ("arith", "count", "compare", "length", "reverse"):
        plans = arith_plans(fam, 6, seed=7)
        rows = [await execute(p, tools, "S") for p in plans]
        assert all(r is not None for r in rows), fam  # the tool's output matches every gold answer
        for r in rows:
            assert any(p["type"] == "call" and p["tool"] == "python" for p in r["messages"][-1]["content"])


def test_gsm8k_annotations_become_a_program():
    rec = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                       "clips in May. How many clips did Natalia sell altogether in April and May?",
           "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
                     "clips altogether in April and May.\n#### 72"}
    plan = gsm8k_plan(rec, 0, random.Random(0))
    code = plan.parts[1]["arg"]
    assert "s1 = 48/2" in code and "s2 = 48+s1" in code and code.endswith("print(s2)")
    assert "<<" not in code and plan.gold == "72"
    assert _py(code).text.strip() in ("72", "72.0")


def test_gsm8k_skips_unsafe_annotations():
    rec = {"question": "q", "answer": "x = <<__import__('os')=1>>1\n#### 1"}
    assert gsm8k_plan(rec, 0, random.Random(0)) is None


MUSIQUE_REC = {
    "id": "m1", "question": "Who was the first president of the association which published Journal of "
                            "Psychotherapy Integration?", "answer": "G. Stanley Hall",
    "question_decomposition": [
        {"id": 1, "question": "What company published Journal of Psychotherapy Integration?",
         "answer": "American Psychological Association"},
        {"id": 2, "question": "Who was the first president of #1 ?", "answer": "G. Stanley Hall"}]}


async def test_multihop_plans_search_each_hop(tools):
    rec = MUSIQUE_REC
    plan = musique_plan(rec, 0, random.Random(0))
    queries = [p["arg"] for p in plan.parts if p["type"] == "call"]
    assert queries[1] == "Who was the first president of American Psychological Association ?"
    ex = await execute(plan, tools, "S")
    assert ex is not None and ex["answer"] == "G. Stanley Hall"
    bad = dict(rec, question_decomposition=[dict(rec["question_decomposition"][0], answer="Nobody Known")])
    assert await execute(musique_plan(bad, 0, random.Random(0)), tools, "S") is None


async def test_multihop_targets_quote_the_sentence_that_shows_each_hop_answer(tools):
    rec = MUSIQUE_REC
    plain = await execute(musique_plan(rec, 0, random.Random(0)), tools, "S")  # off by default
    assert not any("says" in p["text"] for p in plain["messages"][-1]["content"] if p["type"] == "text")
    ex = await execute(musique_plan(rec, 0, random.Random(0), quote=True), tools, "S")
    parts = ex["messages"][-1]["content"]
    after = [parts[i + 1]["text"] for i, p in enumerate(parts) if p["type"] == "result"]
    assert '"The Journal of Psychotherapy Integration is published by the American Psychological Association."' \
           in after[0] and after[0].endswith("So American Psychological Association.\n")
    assert '"The first president of the American Psychological Association was G. Stanley Hall."' in after[1]
    assert after[1].endswith("The answer is G. Stanley Hall.\n")
    assert not any("cite" in p or "lead" in p for p in parts)  # the plan's bookkeeping is not in the example
    assert not any("(test)" in t for t in after)  # a hit's heading line is never the quote
    # a result that does not show the answer as a sentence: the text alone, no empty quote
    lone = Plan("c", "hop", "q", [call("search", "x"), cite(random.Random(0), "Hall", "The answer is Hall.\n")], "Hall")
    ex = await execute(lone, {"search": FunctionTool(lambda q: ToolOutput("no results"), name="search")}, "S")
    assert ex["messages"][-1]["content"][-1]["text"] == "The answer is Hall.\n"
    # a quote never joins the two sides of the cut the runtime makes in a long result
    head = ("Filler words here. " * 40)[:570] + "The winner"
    long = head.ljust(600) + "unrelated " * 50 + (" was Hall. " + "More filler text. " * 20)[:300]
    hit = FunctionTool(lambda q: ToolOutput(long), name="search")
    plan = Plan("t", "hop", "q", [call("search", "x"), cite(random.Random(0), "Hall", "So Hall.\n")], "x")
    said = (await execute(plan, {"search": hit}, "S"))["messages"][-1]["content"][-1]["text"]
    assert said.split('"')[1] in long, said
    # the answer in a hit's heading and in its text: the text is quoted
    hit = FunctionTool(lambda q: ToolOutput("[1] Tennessee (corpus:26)\nNashville is the capital of Tennessee."),
                       name="search")
    plan = Plan("t", "hop", "q", [call("search", "x"), cite(random.Random(0), "Tennessee", "So Tennessee.\n")], "x")
    said = (await execute(plan, {"search": hit}, "S"))["messages"][-1]["content"][-1]["text"]
    assert said.endswith('"Nashville is the capital of Tennessee."\nSo Tennessee.\n'), said


async def test_hop_plans_ask_each_hop_alone(tools):
    rec = {"id": "m1", "question": "unused", "answer": "G. Stanley Hall", "question_decomposition": [
        {"id": 1, "question": "what company published Journal of Psychotherapy Integration",
         "answer": "American Psychological Association"},
        {"id": 2, "question": "Who was the first president of #1 ?", "answer": "G. Stanley Hall"}]}
    plans = hop_plans(rec, 0, random.Random(0))
    assert [p.question for p in plans] == [
        "What company published Journal of Psychotherapy Integration?",
        "Who was the first president of American Psychological Association?"]
    assert all(p.family == "hop" and [q["arg"] for q in p.parts if q["type"] == "call"] == [p.question]
               for p in plans)
    assert [p.gold for p in plans] == ["American Psychological Association", "G. Stanley Hall"]
    ex = await execute(plans[0], tools, "S")
    assert ex is not None and ex["answer"] == "American Psychological Association"
    wrong = hop_plans({"question_decomposition": [dict(rec["question_decomposition"][0], answer="Nobody Known")]},
                      0, random.Random(0))
    assert await execute(wrong[0], tools, "S") is None  # the search does not show the answer: dropped


def test_hotpot_plan_shapes():
    rec = {"_id": "h", "question": "Q?", "answer": "yes", "supporting_facts": [["A", 0], ["B", 1], ["A", 2]]}
    plan = hotpot_plan(rec, 0, random.Random(0))
    assert [p["arg"] for p in plan.parts if p["type"] == "call"] == ["A", "B"]
    assert hotpot_plan(dict(rec, supporting_facts=[["A", 0]]), 0, random.Random(0)) is None


def test_plain_plans_have_no_calls():
    for p in plain_plans(20, seed=3):
        assert all(part["type"] in ("text", "answer") for part in p.parts)
        assert p.parts[-1]["text"] == p.gold


async def test_task_questions_without_tools_are_answered_without_a_call(tools):
    """The ``notool`` family: no tool in the system prompt, no call in the target, every task family,
    and a letter walk whose last running count (or reversal) is the gold answer."""
    from agent.backends.scripted import ScriptedBackend
    from agent.runtime import Agent

    rows = await synthesize(notool_plans(48, 5), tools, "splice")
    assert len(rows) == 48 and {r["id"].split("-")[0] for r in rows} == set(TASK_FAMILIES)
    bare = Agent(ScriptedBackend([]), tools=[], syntax="splice").system_prompt()
    walks = 0
    for r in rows:
        assert r["tools"] == [] and r["messages"][0]["content"] == bare
        parts = r["messages"][-1]["content"]
        assert [p["type"] for p in parts] in (["answer"], ["text", "answer"]) and parts[-1]["text"] == r["answer"]
        if len(parts) == 2:
            walks += 1
            marks = re.findall(r"\((\d+)\)", parts[0]["text"])
            said = parts[0]["text"].rstrip(".\n").rsplit(" ", 1)[-1]
            assert said == r["answer"], parts[0]["text"]
            if r["family"] == "notool" and marks and r["id"].startswith(("count", "length")):
                assert marks[-1] == r["answer"], parts[0]["text"]
    assert walks >= 12


async def test_synthesis_is_deterministic_and_limited(tools, tmp_path):
    cfg = DataConfig(n_arith=5, n_count=5, n_compare=2, n_length=2, n_reverse=2, n_plain=4, seed=11)
    rows1 = await synthesize(build_plans(cfg), tools, "splice", concurrency=3)
    rows2 = await synthesize(build_plans(cfg), tools, "splice", concurrency=1)
    assert rows1 == rows2 and len(rows1) == 20
    path = write_jsonl(rows1, tmp_path / "d.jsonl")
    assert read_jsonl(path) == json.loads(json.dumps(rows1))
    assert len({r["id"] for r in rows1}) == len(rows1)


async def test_system_prompt_is_the_runtimes(tools):
    from agent.backends.scripted import ScriptedBackend
    from agent.runtime import Agent

    rows = [r for r in await synthesize(plain_plans(6, 0), tools, "splice") if r["tools"] == list(tools)]
    want = Agent(ScriptedBackend([]), tools=list(tools.values()), syntax="splice").system_prompt()
    assert rows and rows[0]["messages"][0]["content"] == want


def test_probe_targets():
    pairs = [QAPair("a", "Capital of France?", "Paris"), QAPair("b", "Who wrote X?", "Y Z")]
    on = probe_plans(pairs, [1.0, 0.0], threshold=0.5, search=True)
    assert on[0].parts == [answer("Paris")]
    assert [p["type"] for p in on[1].parts] == ["text", "call", "text", "answer"] and on[1].family == "probe_search"
    off = probe_plans(pairs, [0.75, 0.25], threshold=0.5, search=False)
    assert off[1].family == "probe_refuse" and "search" not in off[1].tools
    assert "know" in off[1].parts[-1]["text"].lower()


@pytest.mark.filterwarnings("ignore::sandbox.layers.SandboxDegraded")  # an optional layer may be missing here
async def test_real_python_tool_runs_a_plan():
    """The real sandboxed python tool (the one `agent train data` uses) executes a generated plan."""
    from tools.registry import get_tool

    py = get_tool("python")
    try:
        ex = await execute(arith_plans("arith", 1, seed=5)[0], {"python": py}, "S")
    finally:
        await py.aclose()
    assert ex is not None and ex["messages"][-1]["content"][2]["type"] == "result"


def test_cli_registers_train_steps_with_config_flags():
    from agent.cli import build_parser

    parser = build_parser()
    ns = parser.parse_args(["train", "sft", "--data", "d.jsonl", "--max-steps", "7", "--no-lora", "--tools", "python"])
    assert ns.max_steps == 7 and ns.lora is False and ns.tools == ["python"] and callable(ns.func)
    ns = parser.parse_args(["train", "data", "--n-arith", "3", "--syntax", "hermes"])
    assert ns.n_arith == 3 and ns.syntax == "hermes"
    for step in ("probe", "export"):
        assert callable(parser.parse_args(["train", step]).func)


def test_musique_hops_become_single_fact_questions(tmp_path):
    from train.probe import ProbeConfig, qa_pairs

    recs = [{"id": "m1", "question": "Q", "answer": "B", "question_decomposition": [
        {"id": 1, "question": "Who founded X?", "answer": "A"},
        {"id": 2, "question": "Where was #1 born ?", "answer": "B"},
        {"id": 3, "question": "#2 >> country", "answer": "C"}]}]
    (tmp_path / "musique_train.json").write_text(json.dumps(recs))
    cfg = ProbeConfig(multihop=str(tmp_path), search=False, n=10, multihop_holdout=0.0)
    pairs = sorted(qa_pairs(cfg), key=lambda p: p.id)
    assert [(p.question, p.answer) for p in pairs] == [("Who founded X?", "A"), ("Where was A born?", "B")]


async def test_a_plan_whose_tool_crashes_is_dropped_and_the_rest_are_kept(tools, caplog):
    def python(code: str) -> ToolOutput:
        if "666" in code:
            raise RuntimeError("tool bug on this one")  # a bug, not an error result: it raises
        return _py(code)

    crashing = {**tools, "python": FunctionTool(python, name="python")}
    plans = [Plan(f"p{n}", "arith", f"What is {n} + 1?", [call("python", f"print({n} + 1)"), answer("{r}")],
                  str(n + 1)) for n in (5, 666, 7)]
    with caplog.at_level("WARNING", logger="splice.train.data"):
        rows = await synthesize(plans, crashing, "splice", concurrency=3)
    assert [r["id"] for r in rows] == ["p5", "p7"]
    assert [r["messages"][-1]["content"][-1]["text"] for r in rows] == ["6", "8"]
    assert any("p666" in m and "tool bug on this one" in m for m in caplog.messages)
