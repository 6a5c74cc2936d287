"""Dataset loaders on small fixture files of each shape, and the task generators."""

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError, DataError
from agent.evals import metrics
from agent.evals.data import FieldNames, collect_passages, detect_format, load_examples, read_records
from agent.evals.tasks import FAMILIES, generate, generate_mix

FIX = Path(__file__).parent / "fixtures" / "evals"


def test_gsm8k_takes_the_answer_after_hashes():
    exs = load_examples(FIX / "gsm8k.jsonl")
    assert [e.answer for e in exs] == ["72", "5000"]
    assert [e.id for e in exs] == ["gsm8k-0", "gsm8k-1"]
    assert exs[0].family == "gsm8k" and "<<48/2=24>>" in exs[0].meta["solution"]


def test_hotpotqa_reads_context_as_passages_even_from_python_literal_strings():
    exs = load_examples(FIX / "hotpotqa.json")
    assert [(e.id, e.answer, e.family) for e in exs] == [
        ("hp1", "Amsterdam", "hotpotqa-bridge"), ("hp2", "yes", "hotpotqa-comparison")]
    assert exs[0].passages[0] == {"title": "Rhine", "text": "The Rhine is a river. It ends in the Netherlands."}
    assert [p["title"] for p in exs[1].passages] == ["Cat", "Dog", "Rhine"]
    assert [p["title"] for p in collect_passages(exs)] == ["Rhine", "Netherlands", "Cat", "Dog"]


def test_musique_keeps_aliases_and_answerability():
    a, b = load_examples(FIX / "musique.jsonl")
    assert a.golds == ["Masaru Ibuka", "Ibuka", "Akio Morita"] and a.answerable
    assert a.family == "musique-2hop" and a.passages[1]["title"] == "Sony"
    assert not b.answerable and b.aliases == [] and b.family == "musique-3hop1"
    assert b.passages == [{"title": "Atlantis", "text": "Atlantis is a legendary island."}]


def test_letter_count_shape_builds_questions_and_fills_missing_counts():
    exs = load_examples(FIX / "letters.jsonl")
    assert [e.answer for e in exs] == ["3", "3", "2"]
    assert exs[0].question == 'How many times does the letter "r" appear in the word "strawberry"?'
    assert "sentence" in exs[2].question and exs[2].family == "count"


def test_generic_shape_with_named_fields_and_alias_lists():
    with pytest.raises(DataError, match="--answer-field"):
        load_examples(FIX / "custom.json")
    exs = load_examples(FIX / "custom.json", names=FieldNames(answer="golds"))
    assert [(e.id, e.answer, e.aliases, e.family) for e in exs] == [
        ("c1", "Jupiter", ["planet Jupiter"], "astro"), ("c2", "8", ["eight"], "bio")]
    assert metrics.is_correct("eight", exs[1].golds)


def test_detect_format():
    assert [detect_format(r) for r in read_records(FIX / "gsm8k.jsonl")][:1] == ["gsm8k"]
    assert detect_format(read_records(FIX / "hotpotqa.json")[1]) == "hotpotqa"
    assert detect_format(read_records(FIX / "musique.jsonl")[0]) == "musique"
    assert detect_format(read_records(FIX / "letters.jsonl")[0]) == "letters"
    assert detect_format({"question": "q", "answer": "a"}) == "generic"


def test_bad_files_raise_data_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_examples(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps({"id": "x", "question": "q", "answer": "a"}) + "\n" for _ in range(2)))
    with pytest.raises(DataError, match="duplicate question id 'x'"):
        load_examples(dup)
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="hotpotqa shape"):
        load_examples(FIX / "gsm8k.jsonl", fmt="hotpotqa")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generators_are_deterministic_and_prefix_stable(family):
    a = generate(family, 20, seed=3)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in generate(family, 20, seed=3)]
    assert [e.question for e in generate(family, 5, seed=3)] == [e.question for e in a[:5]]
    assert [e.question for e in generate(family, 20, seed=4)] != [e.question for e in a]
    assert len({e.id for e in a}) == 20 and all(e.family == family for e in a)


def test_generated_answers_are_right():
    for e in generate("count", 30, 0):
        assert e.answer == str(e.meta["text"].count(e.meta["letter"]))
    for e in generate("reverse", 10, 0):
        assert e.answer == e.meta["text"][::-1] and e.meta["text"] in e.question
    for e in generate("length", 10, 0):
        assert e.answer == str(len(e.meta["text"]))
    for e in generate("compare", 30, 0):
        a, b = e.question.split(": ")[1].split("? ")[0].split(" or ")
        pick = max if "larger" in e.question else min
        assert e.answer == pick(a, b, key=float)
    for e in generate("arith", 30, 0):
        assert int(e.answer) > 0 and len(e.answer) >= 5


def test_generate_mix_interleaves_and_validates():
    mix = generate_mix(["arith", "count"], 5, seed=0)
    assert [e.family for e in mix] == ["arith", "count", "arith", "count", "arith"]
    assert mix[0].id == generate("arith", 1, 0)[0].id
    with pytest.raises(ConfigError, match="unknown task family"):
        generate("poetry", 1)
