"""Training questions reworded (``train.phrasing``), the sentence naming the operation, and recovery
examples whose first program fails for real in the sandbox."""

from __future__ import annotations

import random
import re

import pytest

from agent.evals.tasks import _REGISTRY, TOOL_FAMILIES, generate
from train.data import arith_plans, execute, open_tools, synthesize, task_code, task_intro
from train.phrasing import COMMA_LEADS, FRONT_SEPARATORS, LEADS, TAILS, vary
from train.plans import Plan, answer, call, text


def _held_out_texts() -> list[str]:
    return [t.text.lower() for fam in _REGISTRY.values() for t in fam.templates if t.split != "train"]


def test_no_variation_piece_occurs_in_a_held_out_template():
    held = _held_out_texts()
    assert len(held) >= 50
    for piece in LEADS + COMMA_LEADS + TAILS:
        words = piece.strip().lower().rstrip(".!?:,")
        assert not any(re.search(rf"\b{re.escape(words)}\b", h) for h in held), piece


def test_new_training_templates_are_not_held_out_ones():
    for fam in _REGISTRY.values():
        train = {t.text.lower() for t in fam.templates if t.split == "train"}
        assert not train & {t.text.lower() for t in fam.templates if t.split != "train"}


@pytest.mark.parametrize("comma", [False, True])
@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_vary_keeps_the_subject_character_for_character(family, comma):
    rng = random.Random(0)
    changed = 0
    for ex in generate(family, 300, 7, "train"):
        subject = ex.meta.get("text", "")
        q = vary(rng, ex.question, subject, p=1.0, comma=comma)
        changed += q != ex.question
        if subject:
            assert subject in q, (ex.question, q)
        for k in ("a", "b", "c", "p", "letter"):  # numbers and the letter are kept too
            if k in ex.meta:
                assert ex.meta[k] in q.replace(",", "") or ex.meta[k] in q, (k, ex.question, q)
    assert changed > 250


def test_vary_quotes_a_subject_another_way_and_leaves_words_around_it_alone():
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        q = vary(rng, 'What is the length of "abc"?', "abc", p=1.0)
        m = re.search(r"(\S?)abc(\S?)", q)
        seen.add((m.group(1), m.group(2)))
    assert {('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "`")} <= seen
    assert vary(random.Random(1), "Reverse abcd and abc.", "abc", p=0.0) == "Reverse abcd and abc."
    # a subject inside another word is never requoted
    for s in range(50):
        assert "abcd" in vary(random.Random(s), "Reverse abcd.", "abc", p=1.0)


def test_vary_can_put_the_subject_first_and_refer_to_it():
    rng = random.Random(0)
    fronted = set()
    for _ in range(300):
        q = vary(rng, "Reverse the word 'lantern'.", "lantern", p=1.0, front=True)
        m = re.match(r"""^(?:Hi! |Hello\. |[A-Z][^.]*?[.:!?] )?["'`\u201c]?lantern["'`\u201d]?(.{1,4}?)[Rr]everse it""", q, re.S)
        if m:
            fronted.add(m.group(1))
            assert q.count("lantern") == 1 and "the word" not in q, q
    assert set(FRONT_SEPARATORS) <= fronted  # every separator seen
    # a subject inside another word, or one the sentence needs as a noun, stays where it is
    for s in range(100):
        assert vary(random.Random(s), "Reverse abcd.", "abc", p=1.0, front=True).count("abcd") == 1
        assert "password is" in vary(random.Random(s), "My password is xq7. How long is it?", "xq7", p=1.0, front=True)
    # off by default (the shipped recipe's data does not use it)
    assert not any(vary(random.Random(s), "Reverse the word 'lantern'.", "lantern", p=1.0).startswith(("lantern", "'lantern"))
                   for s in range(200))


def test_comma_leads_open_the_question_and_it_goes_on_in_lower_case():
    """``comma=True``: some rewordings open with a lead-in ending in a comma ("Quickly, reverse ..."),
    the question's own first word lower-cased unless it is the subject; off, none does."""
    rng = random.Random(0)
    opened = []
    for _ in range(400):
        q = vary(rng, "Reverse the word 'Lantern'.", "Lantern", p=1.0, front=True, comma=True)
        lead = next((c for c in COMMA_LEADS if q.startswith(c)), None)
        if lead:
            opened.append(lead)
            rest = q[len(lead):]
            assert rest[:1].islower() or rest.lstrip("\"'`\u201c").startswith("Lantern"), q
    assert len(set(opened)) >= len(COMMA_LEADS) // 2
    assert not any(vary(random.Random(s), "Reverse the word 'lantern'.", "lantern", p=1.0).startswith(COMMA_LEADS)
                   for s in range(300))


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_the_intro_names_what_the_program_computes(family):
    rng = random.Random(0)
    for ex in generate(family, 40, 3, "train"):
        intro, code = task_intro(rng, ex), task_code(ex)
        for number in re.findall(r"-?\d+(?:\.\d+)?", intro):
            assert number in code, (intro, code)
        if "text" in ex.meta and family != "count_text":
            assert ex.meta["text"] in intro
        if "letter" in ex.meta:
            assert f'"{ex.meta["letter"]}"' in intro


async def test_fix_examples_fail_first_in_the_real_sandbox_then_answer():
    plans = [p for fam in TOOL_FAMILIES for p in arith_plans(fam, 2, 50, fix=True)]
    assert {p.family for p in plans} == {"fix"}
    async with open_tools("splice", need_search=False) as tools:
        rows = await synthesize(plans, tools)
        assert len(rows) == len(plans)
        for row in rows:
            parts = row["messages"][2]["content"]
            calls = [p for p in parts if p["type"] == "call"]
            results = [p["text"] for p in parts if p["type"] == "result"]
            assert len(calls) == 2 and not any("fails" in c for c in calls)
            assert re.search(r"(NameError|SyntaxError)", results[0]), results[0]
            assert results[1].strip() == row["answer"]
        # a call the plan expects to fail that works drops the example, and the other way round
        works = Plan("w", "fix", "q", [call("python", "print(1)", fails=True), answer("1")], "1")
        fails = Plan("f", "arith", "q", [text("x\n"), call("python", "print(1"), answer("1")], "1")
        system = "s"
        assert await execute(works, tools, system) is None
        assert await execute(fails, tools, system) is None
