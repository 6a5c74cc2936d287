"""Tool-use training data, synthesised by running the real tools.

Each family turns a source question into a *plan*: words, tool calls and an answer, written in parts
(see ``train.render``). ``execute`` runs every call through the real tool (the Python sandbox, the
local search index), splices the real result in as a ``result`` part, fills ``{r}`` in later text
with the last result, and keeps the example only when the results agree with the gold answer.

Families: ``arith``/``count``/``count_name``/``count_text``/``compare``/``length``/``reverse``/``char``
(the eval task generators, other seeds, training phrasings only: ``agent.evals.tasks.HELDOUT``,
``FRESH``, ``FRESH2`` and ``FRESH3`` templates never appear; about half the questions reworded by
``train.phrasing.vary``; a sentence naming the operation before the code, for arithmetic after the
question's numbers, bare or, with ``arith_clauses``, in their quoted clauses; with ``scene_arith``, a
share of the arithmetic questions composed by ``train.scenes`` instead), ``fix`` (the same tasks
with a failing first program, then the fix), ``gsm8k`` (its ``<<expr=value>>`` annotations become a
Python program), ``multihop`` (HotpotQA/MuSiQue questions become search calls over a local index of
their passages), ``plain`` (questions answered without a tool), ``notool`` (task questions with no
tool offered: answered in the model's own tokens, letter by letter where that fits, never a call)
and ``identity``. Output: JSONL, one chat per line, deterministic by seed (``Plan.id`` order, never
completion order). A plan whose execution raises (a tool bug) is dropped with a warning naming it;
the other plans finish (``agent.concurrency.map_bounded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.scripted import ScriptedBackend
from agent.concurrency import map_bounded
from agent.errors import ConfigError, DataError
from agent.evals.data import read_records, write_jsonl
from agent.evals.metrics import is_correct, normalize_answer
from agent.evals.tasks import generate
from agent.runtime import Agent
from tools.base import Tool
from tools.registry import get_tool
from train import scenes
from train.identity import identity_plans
from train.phrasing import vary
from train.plans import Plan, answer, call, text

__all__ = ["DataConfig", "Plan", "execute", "synthesize", "build_plans", "system_prompt", "write_jsonl",
           "read_jsonl", "arith_plans", "scene_plans", "notool_plans", "gsm8k_plan", "musique_plan", "hop_plans",
           "hotpot_plan", "plain_plans", "text", "call", "answer", "TASK_FAMILIES", "make_data", "open_tools",
           "build_search_index"]

log = logging.getLogger("splice.train.data")

TASK_FAMILIES = ("arith", "count", "count_name", "count_text", "compare", "length", "reverse", "char")


@dataclass
class DataConfig:
    out: str = field(default="data/sft.jsonl", metadata={"help": "output JSONL"})
    syntax: str = field(default="splice", metadata={"help": "tag syntax of the examples"})
    seed: int = field(default=1000, metadata={"help": "data seed (task generators use seed, seed+1, ...)"})
    n_arith: int = field(default=300, metadata={"help": "arithmetic word problems (python)"})
    n_count: int = field(default=300, metadata={"help": "letter counting in words (python)"})
    n_count_name: int = field(default=0, metadata={"help": "letter counting in names (python)"})
    n_count_text: int = field(default=0, metadata={"help": "letter counting in sentences and paragraphs (python)"})
    n_compare: int = field(default=60, metadata={"help": "decimal comparison (python)"})
    n_length: int = field(default=60, metadata={"help": "string length (python)"})
    n_reverse: int = field(default=60, metadata={"help": "string reversal (python)"})
    n_char: int = field(default=0, metadata={"help": "n-th character of a word (python)"})
    n_fix: int = field(default=0, metadata={
        "help": "recovery examples over every task family: a first program that fails for real, a sentence "
                "naming the bug, a program that works (python)"})
    n_gsm8k: int = field(default=300, metadata={"help": "GSM8K train problems converted to code"})
    n_multihop: int = field(default=200, metadata={"help": "HotpotQA/MuSiQue questions as search calls"})
    n_hop: int = field(default=0, metadata={
        "help": "single-fact questions (the hops of the training MuSiQue decompositions) as one search each"})
    n_plain: int = field(default=150, metadata={"help": "questions answered without a tool"})
    n_notool: int = field(default=0, metadata={
        "help": "task questions of every family with no tool offered, answered without a call (letters "
                "walked through one by one where the text is short)"})
    n_identity: int = field(default=0, metadata={"help": "identity examples (needs --name)"})
    gsm8k: str = field(default="", metadata={"help": "GSM8K train JSONL (question, answer with <<e=v>>)"})
    multihop: str = field(default="", metadata={"help": "dir with hotpotqa_train*.json / musique_train*.json"})
    index: str = field(default="", metadata={"help": "search index path (built from the multihop passages)"})
    multihop_holdout: float = field(default=0.2, metadata={
        "help": "share of multihop questions kept out of training (by id hash), written next to --out "
                "as <out>.heldout-{hotpotqa,musique}.json for evaluation"})
    name: str = field(default="", metadata={
        "help": "assistant name for identity examples (empty: varied names, each configured by the identity "
                "line of its system prompt, so the model answers with whatever --system says)"})
    maker: str = field(default="", metadata={"help": "assistant maker for identity examples"})
    concurrency: int = field(default=4, metadata={"help": "examples executed at once"})
    phrasing: str = field(default="train", metadata={
        "help": "question templates of the task families: train (held-out templates stay out), all"})
    subject_first: bool = field(default=False, metadata={
        "help": "rewordings may put a one-word subject first and refer to it as 'it' (train.phrasing.vary)"})
    quote_evidence: bool = field(default=False, metadata={
        "help": "multi-hop targets quote the sentence of each search result that shows the hop's answer"})
    arith_clauses: bool = field(default=False, metadata={
        "help": "arithmetic targets quote, in order, each clause of the question that holds a number before "
                "naming the operation (each number read with its role), instead of listing the bare numbers"})
    scene_arith: float = field(default=0.0, metadata={
        "help": "share of the arithmetic examples whose question is composed from a scene and a frame "
                "(train.scenes: many more wordings of each operation) instead of an eval training template"})
    scene_more: bool = field(default=False, metadata={
        "help": "composed arithmetic draws from train.scenes.MORE_FRAMES too: other cue words for each operation, "
                "bare two-number requests, people who each do the same thing before a second step"})
    comma_leads: bool = field(default=False, metadata={
        "help": "rewordings may open with a lead-in ending in a comma (train.phrasing.COMMA_LEADS), the question "
                "going on in lower case: a first word and comma before the subject that are not the subject"})

    def __post_init__(self) -> None:
        if self.n_gsm8k and not self.gsm8k:
            self.n_gsm8k = 0
        if not self.multihop:
            self.n_multihop = self.n_hop = 0
        if (self.n_multihop or self.n_hop) and not self.index:
            raise ConfigError("--n-multihop needs --index PATH (built from --multihop passages if missing)")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if not 0.0 <= self.scene_arith <= 1.0:
            raise ConfigError(f"scene_arith is a share: 0 to 1, got {self.scene_arith}")


def _fill(part: dict[str, Any], results: list[str]) -> dict[str, Any]:
    if part["type"] not in ("text", "answer") or not results:
        return part
    filled = part["text"].replace("{r}", results[-1].strip())
    if "cite" not in part:
        return {**part, "text": filled}
    # a cited text: first the sentence of the latest result that shows the answer, quoted
    quoted = next((q for q in (_sentence_with(part["cite"], r) for r in reversed(results)) if q), "")
    rest = {k: v for k, v in part.items() if k not in ("cite", "lead")}
    return {**rest, "text": f'{part["lead"]}"{quoted}"\n{filled}' if quoted else filled}


def cite(rng: random.Random, needle: str, then: str) -> dict[str, Any]:
    """A text part that, once the calls have run, quotes the sentence of the latest result that
    shows ``needle`` (the hop's answer), then says ``then``: the model learns to point at the
    evidence before it answers. Without such a sentence it is ``then`` alone."""
    return {**text(then), "cite": needle, "lead": rng.choice(_CITE_LEADS)}


_CITE_LEADS = ("The result says: ", "It says: ", "From the result: ", "The passage says: ")
_MAX_QUOTE = 400  # characters; a longer sentence is not quoted


def _sentence_with(needle: str, result: str) -> str:
    """The first sentence of the visible part of ``result`` that contains ``needle`` (normalised)."""
    # a sentence ends at . ! ? after a lower-case letter or digit ("G. Stanley Hall" is one name)
    for sentence in re.split(r"(?<=[a-z0-9)\"'][.!?])\s+|\n+", _visible(result)):
        sentence = sentence.strip()
        if re.match(r"\[\d+\] ", sentence):  # a hit's heading (rank, title, source), not its text
            continue
        if len(sentence) <= _MAX_QUOTE and _found(needle, sentence):
            return sentence
    return ""


async def execute(plan: Plan, tools: Mapping[str, Tool], system: str) -> dict[str, Any] | None:
    """Run the plan's calls through the tools, one session per example; None if a call fails or
    the results do not support the answer."""
    parts: list[dict[str, Any]] = []
    results: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        sessions: dict[str, Any] = {}
        for part in plan.parts:
            if part["type"] != "call":
                parts.append(_fill(part, results))
                continue
            name = part["tool"]
            if name not in sessions:
                sessions[name] = await stack.enter_async_context(tools[name].session())
            out = await sessions[name](part["arg"])
            if out.error != bool(part.get("fails")):
                return None
            results.append(out.text)
            parts += [{k: v for k, v in part.items() if k != "fails"}, {"type": "result", "text": out.text}]
    if plan.check is not None and not plan.check(results):
        return None
    messages = [{"role": "system", "content": system}, {"role": "user", "content": plan.question},
                {"role": "assistant", "content": parts}]
    return {"id": plan.id, "family": plan.family, "tools": list(plan.tools), "answer": plan.gold,
            "messages": messages}


def system_prompt(tools: Sequence[Tool], syntax: str, identity: str = "") -> str:
    """The runtime's own system prompt for these tools (``Agent.system_prompt``), with the identity
    line ``RuntimeConfig.system`` puts first."""
    return Agent(ScriptedBackend([]), tools=list(tools), syntax=syntax, system=identity).system_prompt()


# -- task-generator families ------------------------------------------------------------------------
# The first sentence says what is to be computed, in words, before the code: the decision (which
# operation, on which text or numbers) is made where the model's language knowledge helps, and the
# program then follows from the sentence. One of these per family (arith: per expression kind).
_INTRO_ARITH = {
    "mul": ("I'll multiply {a} by {b} with Python.", "This is {a} times {b}; I'll compute it exactly."),
    "add": ("I'll add {a} and {b} with Python.", "This is the sum of {a} and {b}; I'll compute it exactly."),
    "sub": ("I'll subtract {b} from {a} with Python.", "This is {a} minus {b}; I'll compute it exactly."),
    "mul_sub": ("I'll multiply {a} by {b}, then subtract {c}.", "That is {a} times {b}, minus {c}. "
                "I'll compute it with Python."),
    "add_mul": ("I'll add {a} and {b}, then multiply the sum by {c}.", "That is {a} plus {b}, times {c}. "
                "I'll compute it with Python."),
    "floordiv": ("I'll divide {a} by {b} and keep the whole part.", "This is {a} divided by {b}, rounded "
                 "down; I'll use integer division in Python."),
    "percent": ("I'll take {p}% of {a}, that is {a} * {p} / 100.", "This is {p} percent of {a}; I'll compute "
                "it with Python."),
}
_INTRO_TASK = {
    "count": ("I'll count the letter {L} in {T} with Python instead of guessing.",
              "Counting letters by eye is error-prone, so I'll count {L} in {T} with code."),
    "count_name": ("I'll count the letter {L} in the name {T} with Python.",
                   "Counting by eye is error-prone, so I'll count {L} in the name {T} with code."),
    "count_text": ("I'll copy the text into Python and count the letter {L}.",
                   "Counting letters by eye is error-prone, so I'll count {L} in the text with code."),
    "compare": ("I need the {want} of {a} and {b}; I'll compare them with Python.",
                "I'll let Python pick the {want} of {a} and {b}."),
    "length": ("I need the number of characters in {T}; I'll use len() in Python.",
               "I'll count the characters of {T} with Python's len()."),
    "reverse": ("I need {T} reversed, last character first; I'll reverse it with Python.",
                "I'll reverse the string {T} with Python."),
    "char": ("I need the character at position {n} of {T}; I'll index it with Python.",
             "I'll let Python pick character number {n} of {T}."),
}
_OUTRO = ("The result is {r}.\n", "Python gives {r}.\n", "So the answer is {r}.\n")
# the tool sets a task example is offered (its system prompt): the runtime default and python alone
_TASK_TOOLS = (("python", "search"), ("python", "search"), ("python",))
_PLAIN_TOOLS = (("python", "search"), ("python",), ())
_SEARCH_TOOLS = (("python", "search"), ("search",))


def _correct(gold: str) -> Callable[[list[str]], bool]:
    return lambda results: bool(results) and is_correct(results[-1].strip(), gold)


def _lit(s: str) -> str:
    """A Python string literal of ``s``, in double quotes where it can be (as a person would type it)."""
    return f'"{s}"' if '"' not in s and "\\" not in s else repr(s)


def task_code(ex: Any) -> str:
    """The program a task example's answer comes from: the question's text copied exactly into a
    variable, case-insensitive where case does not matter, ``print`` of the final value."""
    m, fam = ex.meta, ex.family
    if fam == "arith":  # a two-step expression as two steps: no operator precedence to get wrong
        if m["kind"] == "mul_sub":
            return f"total = {m['a']} * {m['b']}\nprint(total - {m['c']})"
        if m["kind"] == "add_mul":
            return f"total = {m['a']} + {m['b']}\nprint(total * {m['c']})"
        return f"print({m['expr']})"
    if fam in ("count", "count_name", "count_text"):
        return f"text = {_lit(m['text'])}\nletter = {_lit(m['letter'])}\nprint(text.lower().count(letter.lower()))"
    if fam == "compare":
        return f"a = {m['a']}\nb = {m['b']}\nprint({'max' if m['want'] == 'larger' else 'min'}(a, b))"
    if fam == "length":
        return f"text = {_lit(m['text'])}\nprint(len(text))"
    if fam == "reverse":
        return f"text = {_lit(m['text'])}\nprint(text[::-1])"
    if fam == "char":
        return f"word = {_lit(m['text'])}\nprint(word[{m['n']} - 1])"
    raise ConfigError(f"no program for task family {fam!r}")


_CLAUSE_BREAK = re.compile(r"(?<=[.?!;:,])\s+|\s+(?=(?:and|then|but|while|after|until|so)\b)")


def number_clauses(question: str) -> list[str]:
    """The clauses of ``question`` that hold a digit, in order, as written: the question split after
    punctuation followed by a space and before a joining word ("and", "then", ...). Digit groups
    ("2,193,818") and decimals are not broken: their comma or point has no space after it."""
    parts = (p.strip(" ,;:.?!") for p in _CLAUSE_BREAK.split(question))
    return [p for p in parts if re.search(r"\d", p)]


def task_intro(rng: random.Random, ex: Any, question: str = "", clauses: bool = False) -> str:
    """The sentence before a task example's code: what is computed, on what (see ``_INTRO_TASK``).
    ``clauses`` (arithmetic): quote each clause of ``question`` (as the model reads it, after any
    rewording; default the example's own) that holds a number, then name the operation."""
    m = ex.meta
    if ex.family == "arith" and clauses:
        quoted = "; ".join(f'"{c}"' for c in number_clauses(question or ex.question))
        lead = rng.choice(("The question says: {}.", "From the question: {}.", "What the question gives: {}."))
        return lead.format(quoted) + " " + rng.choice(_INTRO_ARITH[m["kind"]]).format(**m) + "\n"
    if ex.family == "arith":  # every number of the question first, in its order: none gets dropped
        given = [n for n in (x.replace(",", "") for x in re.findall(r"\d[\d,]*", ex.question))
                 if n in {m.get(k) for k in "abcp"}]
        listed = ", ".join(given[:-1]) + f" and {given[-1]}" if len(given) > 1 else "".join(given)
        lead = rng.choice(("The numbers are {}.", "The question gives {}.", "Numbers in the question: {}."))
        return lead.format(listed) + " " + rng.choice(_INTRO_ARITH[m["kind"]]).format(**m) + "\n"
    want = {"larger": "larger", "smaller": "smaller"}.get(m.get("want", ""), "")
    return rng.choice(_INTRO_TASK[ex.family]).format(
        L=_lit(m.get("letter", "")), T=_lit(m.get("text", "")), n=m.get("n", ""), a=m.get("a", ""),
        b=m.get("b", ""), want=want) + "\n"


def _bug(rng: random.Random, code: str) -> tuple[str, str] | None:
    """A realistic first attempt that fails, and the sentence that fixes it: a misspelt variable in
    the last line (NameError) or an unclosed ``print(`` (SyntaxError)."""
    last = code.rsplit("\n", 1)[-1]
    typos = {"text": "txt", "word": "wrd", "letter": "leter", "total": "totl", "a": "x", "b": "y"}
    names = [v for v in typos if re.search(rf"\b{v}\b", last)]
    if names and rng.random() < 0.6:
        v = rng.choice(names)
        typo = typos[v]
        bad = code[: len(code) - len(last)] + re.sub(rf"\b{v}\b", typo, last, count=1)
        return bad, f"The code used the name {typo}, which is not defined; I'll fix it to {v}.\n"
    if last.startswith("print(") and last.endswith(")"):
        return code[:-1], "I left the print( call unclosed; I'll fix the parenthesis.\n"
    return None


def arith_plans(family: str, n: int, seed: int, phrasing: str = "train", *, fix: bool = False,
                subject_first: bool = False, clauses: bool = False, comma: bool = False) -> list[Plan]:
    """Plans for one eval task family, from ``agent.evals.tasks.generate`` with this seed, drawn from
    the training phrasings only by default (the held-out templates stay out of training data). The
    question is reworded (``train.phrasing.vary``) in about half of them. ``fix``: recovery examples,
    whose first program fails for real and the second one, after a sentence naming the bug, works.
    ``subject_first``, ``clauses`` (``arith_clauses``), ``comma`` (``comma_leads``): see ``DataConfig``."""
    rng = random.Random(f"plans:{family}:{seed}:{'fix' if fix else ''}")
    return _task_plans(rng, generate(family, n, seed, phrasing), fix=fix, subject_first=subject_first,
                       clauses=clauses, comma=comma)


def scene_plans(n: int, seed: int, *, clauses: bool = False, more: bool = False, comma: bool = False) -> list[Plan]:
    """Arithmetic plans whose questions are composed from a scene and a frame (``train.scenes``; with
    ``more``, its ``MORE_FRAMES`` too), not the eval's templates; reworded and solved as ``arith_plans`` does."""
    return _task_plans(random.Random(f"plans:scenes:{seed}"), scenes.generate(n, seed, more=more), clauses=clauses,
                       comma=comma)


def _task_plans(rng: random.Random, examples: Iterable[Any], *, fix: bool = False,
                subject_first: bool = False, clauses: bool = False, comma: bool = False) -> list[Plan]:
    out = []
    for ex in examples:
        question = vary(rng, ex.question, ex.meta.get("text", ""), p=0.5, front=subject_first, comma=comma)
        code = task_code(ex)
        parts = [text(task_intro(rng, ex, question, clauses))]
        if fix:
            bug = _bug(rng, code)
            if bug is None:
                continue
            parts += [call("python", bug[0], fails=True), text(bug[1])]
        parts += [call("python", code), text(rng.choice(_OUTRO)), answer("{r}")]
        out.append(Plan(f"{ex.id}{'-fix' if fix else ''}", "fix" if fix else ex.family, question, parts, ex.answer,
                        _correct(ex.answer), tools=rng.choice(_TASK_TOOLS)))
    return out


# -- GSM8K ------------------------------------------------------------------------------------------
_ANNOT = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_SAFE_EXPR = re.compile(r"^[\d\s.+\-*/()%]+$")


def gsm8k_plan(rec: dict[str, Any], i: int, rng: random.Random) -> Plan | None:
    """A GSM8K solution as a program: one ``sN = expr`` line per annotation (earlier results become
    variables), each step's sentence as a comment, then ``print`` of the last step."""
    question, sol = rec["question"], rec["answer"]
    gold = sol.rsplit("####", 1)[-1].strip().replace(",", "")
    lines, steps = [], []  # steps: (var, value)
    for line in sol.split("####")[0].splitlines():
        found = _ANNOT.findall(line)
        if not found:
            continue
        comment = re.sub(r"\s*=?\s*[$]?<<[^<>]*>>[-\d.,]*", "", line).strip()
        lines.append(f"# {comment}")
        for expr, value in found:
            expr = expr.strip().replace("x", "*").replace("X", "*")
            if not _SAFE_EXPR.match(expr):
                return None
            expr = _use_vars(expr, steps, question)
            var = f"s{len(steps) + 1}"
            lines.append(f"{var} = {expr}")
            steps.append((var, value.strip()))
    if not steps:
        return None
    code = "\n".join(lines + [f"print({steps[-1][0]})"])
    parts = [text(rng.choice(("Let me work through it step by step in Python.\n",
                              "I'll write each step as code.\n", "I'll compute the steps with Python.\n"))),
             call("python", code), text(f"The program prints {{r}}, so the answer is {gold}.\n"), answer(gold)]
    return Plan(f"gsm8k-{i}", "gsm8k", question, parts, gold, _correct(gold))


def _use_vars(expr: str, steps: list[tuple[str, str]], question: str) -> str:
    """Replace numbers equal to an earlier step's value (and not given in the question) by its var."""
    given = set(re.findall(r"\d+(?:\.\d+)?", question))
    for var, value in reversed(steps):
        if len(value) >= 2 and value not in given:
            expr = re.sub(rf"(?<![\d.]){re.escape(value)}(?![\d.])", var, expr)
    return expr


# -- multi-hop QA -------------------------------------------------------------------------------------
def _norm(s: str) -> str:
    return normalize_answer(s)


def _found(needle: str, haystack: str) -> bool:
    return bool(_norm(needle)) and _norm(needle) in _norm(_visible(haystack))


def _visible(result: str) -> str:
    """Roughly what survives the runtime's head+tail truncation of a long result (~256 tokens)."""
    return result if len(result) <= 900 else result[:600] + "\n" + result[-300:]  # a line at the cut


def _then(rng: random.Random, quote: bool, needle: str, then: str) -> dict[str, Any]:
    """The text after a search result: ``then``, after the quoted evidence when ``quote``."""
    return cite(rng, needle, then) if quote else text(then)


def musique_plan(rec: dict[str, Any], i: int, rng: random.Random, *, quote: bool = False) -> Plan | None:
    """One search per sub-question of the decomposition, with ``#k`` filled by earlier answers;
    ``quote``: each hop's answer follows the quoted sentence that shows it (``cite``)."""
    hops = rec.get("question_decomposition") or []
    if not hops or not rec.get("answerable", True):
        return None
    answers: list[str] = []
    parts = [text(rng.choice(("I need to look this up step by step.\n", "Let me search for each part.\n")))]
    for k, hop in enumerate(hops):
        q = hop["question"]
        for j, a in enumerate(answers, 1):
            q = q.replace(f"#{j}", a)
        q = re.sub(r"\s*>>\s*", " ", q).strip()
        if "#" in q:
            return None
        last = k == len(hops) - 1
        parts += [call("search", q), _then(rng, quote, hop["answer"], f"The answer is {rec['answer']}.\n" if last
                                            else f"So {hop['answer']}.\n")]
        answers.append(hop["answer"])
    gold = rec["answer"]
    parts.append(answer(gold))
    check = lambda res: all(_found(a, r) for a, r in zip(answers, res))  # noqa: E731
    return Plan(f"musique-{rec.get('id', i)}", "multihop", rec["question"], parts, gold, check,
                tools=rng.choice(_SEARCH_TOOLS))


def hop_plans(rec: dict[str, Any], i: int, rng: random.Random, *, quote: bool = False) -> list[Plan]:
    """Each hop of a MuSiQue decomposition (``#k`` filled) as its own question: one search, then the
    hop's answer, kept only if the search result shows it."""
    out, answers = [], []
    for k, hop in enumerate(rec.get("question_decomposition") or []):
        q = hop["question"]
        for j, a in enumerate(answers, 1):
            q = q.replace(f"#{j}", a)
        answers.append(hop["answer"])
        if "#" in q or ">>" in q or not hop["answer"]:
            continue
        q = re.sub(r"\s*\?*$", "?", q[0].upper() + q[1:].strip(), count=1)
        gold = hop["answer"]
        parts = [text(rng.choice(("Let me search for this.\n", "I'll look this up.\n", ""))), call("search", q),
                 _then(rng, quote, gold, f"The answer is {gold}.\n"), answer(gold)]
        out.append(Plan(f"hop-{rec.get('id', i)}-{k}", "hop", q, parts, gold,
                        lambda res, g=gold: _found(g, res[0]), tools=rng.choice(_SEARCH_TOOLS)))
    return out


def hotpot_plan(rec: dict[str, Any], i: int, rng: random.Random, *, quote: bool = False) -> Plan | None:
    """Search the question, then the other supporting page by title; the answer must be found."""
    titles = list(dict.fromkeys(t for t, _ in rec.get("supporting_facts", [])))
    if len(titles) != 2:
        return None
    gold = rec["answer"]
    if gold.lower() in ("yes", "no"):
        first, second = titles
        parts = [text(f"I'll look up {first} and {second}.\n"), call("search", first), call("search", second)]
    else:
        parts = [text("Let me search for this.\n"), call("search", rec["question"]),
                 text(f"I also need {titles[1]}.\n"), call("search", titles[1])]
    yes_no = gold.lower() in ("yes", "no")
    parts += [_then(rng, quote and not yes_no, gold, f"The answer is {gold}.\n"), answer(gold)]
    check = (lambda res: True) if yes_no else (lambda res: any(_found(gold, r) for r in res))
    return Plan(f"hotpot-{rec.get('_id', i)}", "multihop", rec["question"], parts, gold, check,
                tools=rng.choice(_SEARCH_TOOLS))


def multihop_records(root: str | Path, holdout: float = 0.0, heldout_prefix: str | Path = ""
                     ) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record) of the multi-hop sets, minus a held-out share (by id hash), which is written
    to ``<heldout_prefix>.heldout-<set>.json`` in the set's own shape (``agent eval`` reads it)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, kind in (("hotpotqa_train.json", "hotpot"), ("musique_train.json", "musique")):
        p = Path(root) / name
        if not p.exists():
            continue
        recs = read_records(p)
        held = [zlib.crc32(str(r.get("_id", r.get("id", i))).encode()) % 1000 < holdout * 1000
                for i, r in enumerate(recs)]
        out += [(kind, r) for r, h in zip(recs, held) if not h]
        if heldout_prefix and any(held):
            dest = Path(f"{heldout_prefix}.heldout-{name.split('_')[0]}.json")
            dest.write_text(json.dumps([r for r, h in zip(recs, held) if h], ensure_ascii=False))
    if not out:
        raise DataError(f"no hotpotqa_train.json or musique_train.json under {root}")
    return out


def multihop_corpora(root: str | Path) -> list[Path]:
    """The passage files of the multi-hop sets (title -> sentences, or a list of {title, text})."""
    found = [p for p in (Path(root) / "hotpotqa_train_corpus.json", Path(root) / "musique_train_corpus.json")
             if p.exists()]
    if not found:
        raise DataError(f"no *_train_corpus.json passages under {root}")
    return found


# -- plain answers ---------------------------------------------------------------------------------
def plain_plans(n: int, seed: int, phrasing: str = "train") -> list[Plan]:
    """Questions a model answers without a tool (``agent.evals.tasks`` family ``plain``): the target
    answers directly, with and without tools offered."""
    rng = random.Random(f"plain:{seed}")
    out = []
    for ex in generate("plain", n, seed, phrasing):
        say = ex.meta.get("say", "")
        parts = ([text(say + "\n")] if say else []) + [answer(ex.answer)]
        question = ex.question if ex.meta.get("kind") == "greet" else vary(rng, ex.question, p=0.35)
        out.append(Plan(ex.id, "plain", question, parts, ex.answer, tools=rng.choice(_PLAIN_TOOLS)))
    return out


# -- task questions without tools ----------------------------------------------------------------------
_SHORT = 24  # characters: longer texts get a direct answer, not a letter-by-letter walk


def notool_text(ex: Any) -> str:
    """What the model says before its answer when no tool is offered: for short texts a walk through
    the characters that keeps the count in the tokens (``r(1) ... r(2)``), else nothing."""
    m, fam = ex.meta, ex.family
    t = m.get("text", "")
    if not t or len(t) > _SHORT:
        return ""
    if fam in ("count", "count_name"):
        k, marks = 0, []
        for ch in t.replace(" ", ""):
            if ch.lower() == m["letter"].lower():
                k += 1
                marks.append(f"{ch}({k})")
            else:
                marks.append(ch)
        return f"Going through the letters: {' '.join(marks)}. That makes {k}.\n"
    if fam == "length":
        return f"Numbering the characters: {' '.join(f'{c}({i})' for i, c in enumerate(t, 1))}. That makes {len(t)}.\n"
    if fam == "char":
        n = int(m["n"])
        walk = " ".join(f"{c}({i})" for i, c in enumerate(t[:n], 1))
        return f"Numbering the letters: {walk}. Number {n} is {t[n - 1]}.\n"
    if fam == "reverse":
        return f"From the last character back: {' '.join(reversed(t))}. Together: {t[::-1]}.\n"
    return ""


def notool_plans(n: int, seed: int, phrasing: str = "train", *, subject_first: bool = False,
                 comma: bool = False) -> list[Plan]:
    """Task questions of every family in a system prompt that offers no tool: the target never calls
    one (a call there is malformed); it answers, after ``notool_text`` where that fits."""
    rng = random.Random(f"notool:{seed}")
    per = -(-n // len(TASK_FAMILIES))
    out = []
    for k, fam in enumerate(TASK_FAMILIES):
        for ex in generate(fam, per, seed + 200 + k, phrasing):
            question = vary(rng, ex.question, ex.meta.get("text", ""), p=0.5, front=subject_first, comma=comma)
            say = notool_text(ex)
            out.append(Plan(f"{ex.id}-notool", "notool", question, ([text(say)] if say else []) + [answer(ex.answer)],
                            ex.answer, tools=()))
    return out if len(out) <= n else [out[i] for i in sorted(rng.sample(range(len(out)), n))]


# -- assembly ----------------------------------------------------------------------------------------
def build_plans(cfg: DataConfig) -> list[Plan]:
    plans: list[Plan] = []
    for k, fam in enumerate(TASK_FAMILIES):
        n = getattr(cfg, f"n_{fam}")
        composed = round(n * cfg.scene_arith) if fam == "arith" else 0
        if n - composed:
            plans += arith_plans(fam, n - composed, cfg.seed + k, cfg.phrasing, subject_first=cfg.subject_first,
                                 clauses=cfg.arith_clauses, comma=cfg.comma_leads)
        if composed:
            plans += scene_plans(composed, cfg.seed + k, clauses=cfg.arith_clauses, more=cfg.scene_more,
                                 comma=cfg.comma_leads)
    if cfg.n_fix:  # other seeds than the families' own examples
        per = -(-cfg.n_fix // len(TASK_FAMILIES))
        for k, fam in enumerate(TASK_FAMILIES):
            plans += arith_plans(fam, 2 * per, cfg.seed + 100 + k, cfg.phrasing, fix=True,
                                 subject_first=cfg.subject_first, clauses=cfg.arith_clauses,
                                 comma=cfg.comma_leads)[:per]
    rng = random.Random(f"sources:{cfg.seed}")
    if cfg.n_gsm8k:
        recs = read_records(cfg.gsm8k)
        order = rng.sample(range(len(recs)), len(recs))
        plans += _take((gsm8k_plan(recs[j], j, rng) for j in order), cfg.n_gsm8k)
    if cfg.n_multihop or cfg.n_hop:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        recs2 = multihop_records(cfg.multihop, cfg.multihop_holdout, Path(cfg.out).with_suffix(""))
        order = rng.sample(range(len(recs2)), len(recs2))
        make = {"hotpot": hotpot_plan, "musique": musique_plan}
        plans += _take((make[recs2[j][0]](recs2[j][1], j, rng, quote=cfg.quote_evidence) for j in order),
                       cfg.n_multihop)
        if cfg.n_hop:  # the same training records only: held-out questions' hops stay out too
            hops = [p for j in order if recs2[j][0] == "musique"
                    for p in hop_plans(recs2[j][1], j, rng, quote=cfg.quote_evidence)]
            plans += _take(iter(hops), cfg.n_hop)
    plans += plain_plans(cfg.n_plain, cfg.seed, cfg.phrasing)
    if cfg.n_notool:
        plans += notool_plans(cfg.n_notool, cfg.seed, cfg.phrasing, subject_first=cfg.subject_first,
                              comma=cfg.comma_leads)
    if cfg.n_identity:
        plans += identity_plans(cfg.n_identity, cfg.name, cfg.maker, cfg.seed)
    return plans


def _take(plans: Iterable[Plan | None], n: int) -> list[Plan]:
    """Up to 2n convertible plans (execution drops some; the caller trims to n per family)."""
    out = []
    for p in plans:
        if p is not None:
            out.append(p)
            if len(out) >= 2 * n:
                break
    return out


async def synthesize(plans: Sequence[Plan], tools: Mapping[str, Tool], syntax: str = "splice",
                     concurrency: int = 4, limits: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Execute plans (``concurrency`` at once); keep plan order; at most ``limits[family]`` each."""
    prompts: dict[tuple[tuple[str, ...], str], str] = {}
    for p in plans:
        if (p.tools, p.identity) not in prompts:
            prompts[p.tools, p.identity] = system_prompt([tools[t] for t in p.tools if t in tools], syntax, p.identity)
    out = await map_bounded(lambda plan: execute(plan, tools, prompts[plan.tools, plan.identity]), plans,
                            concurrency)
    failed = [(p, r) for p, r in zip(plans, out) if isinstance(r, Exception)]
    for plan, exc in failed:
        log.warning("plan %s failed and was dropped: %s: %s", plan.id, type(exc).__name__, exc)
    if failed:
        log.warning("%d of %d plans failed (tool errors that raised); the rest were kept", len(failed), len(plans))
    kept, count = [], dict.fromkeys((p.family for p in plans), 0)
    for ex in out:
        if isinstance(ex, dict) and (limits is None or count[ex["family"]] < limits.get(ex["family"], 1 << 30)):
            count[ex["family"]] += 1
            kept.append(ex)
    return kept


def family_limits(cfg: DataConfig) -> dict[str, int]:
    lim = {f: getattr(cfg, f"n_{f}") for f in TASK_FAMILIES}
    lim.update(fix=cfg.n_fix, gsm8k=cfg.n_gsm8k, multihop=cfg.n_multihop, hop=cfg.n_hop, plain=cfg.n_plain,
               notool=cfg.n_notool, identity=cfg.n_identity)
    return lim


# -- the real tools, and the data file -----------------------------------------------------------------
@contextlib.asynccontextmanager
async def open_tools(syntax: str, index: str = "", multihop: str = "",
                     need_search: bool = True) -> AsyncIterator[dict[str, Any]]:
    """The real tools: the Python sandbox and (when needed) local search over ``index``, built from
    the multi-hop passages first if the index does not exist yet."""
    tools = {"python": get_tool("python")}
    if need_search and index:
        if not await asyncio.to_thread(Path(index).exists):
            await asyncio.to_thread(build_search_index, index, multihop)
        tools["search"] = get_tool("search", backend="local", index=index)
    try:
        yield tools
    finally:
        for t in tools.values():
            await t.aclose()


def build_search_index(index: str, multihop: str) -> None:
    from tools.search import build_index  # lazy: heavy (tools.search loads httpx and every search backend)

    if not multihop:
        raise ConfigError(f"search index {index} does not exist; give --multihop DIR to build it from passages")
    build_index(multihop_corpora(multihop), index, progress=False)


async def make_data(cfg: DataConfig) -> list[dict[str, Any]]:
    """Synthesise the data ``cfg`` describes with the real tools and write it to ``cfg.out``
    (``agent train data`` and the recipe's data stage)."""
    plans = build_plans(cfg)
    async with open_tools(cfg.syntax, cfg.index, cfg.multihop, need_search=cfg.n_multihop + cfg.n_hop > 0) as tools:
        rows = await synthesize(plans, tools, cfg.syntax, cfg.concurrency, family_limits(cfg))
    write_jsonl(rows, cfg.out)
    return rows


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not JSON ({e})") from e
    return rows
