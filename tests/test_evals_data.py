"""Dataset loaders on small fixture files of each shape, and the task generators."""

import collections
import json
import re
from decimal import Decimal
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


# Each family's gold answer recomputed from the question text alone, by other means than tasks.py
# uses (no str.count, no slicing, no float): a wrong generator or a question that does not say what
# the answer assumes both fail.
_ARITH = [  # (question pattern, how its numbers combine)
    (r" (\d+) [\w ]+ per \w+\. How many .* in (\d+) \w+\?$", lambda a, b: a * b),
    (r"holds (\d+) .* brings (\d+) more", lambda a, b: a + b),
    (r"had (\d+) residents\. Then (\d+) of them moved away", lambda a, b: a - b),
    (r"packs (\d+) crates with (\d+) .* ships (\d+) ", lambda a, b, c: a * b - c),
]


def _arith_answer(question: str) -> int:
    for pattern, combine in _ARITH:
        m = re.search(pattern, question)
        if m:
            return combine(*map(int, m.groups()))
    raise AssertionError(f"no known arithmetic shape: {question}")


def _quoted(question: str) -> list[str]:
    return re.findall(r'"([^"]*)"', question)


def test_generated_answers_are_right():
    kinds = set()
    for e in generate("arith", 60, 0):
        assert int(e.answer) == _arith_answer(e.question), e.question
        kinds.add(e.meta["kind"])
    assert kinds == {"mul", "add", "sub", "mul_sub"}
    for e in generate("count", 60, 0):
        letter, text = _quoted(e.question)
        assert int(e.answer) == collections.Counter(text.lower())[letter.lower()], e.question
    for e in generate("reverse", 20, 0):
        (text,) = _quoted(e.question)
        assert e.answer == "".join(reversed(text)) and sorted(e.answer) == sorted(text)
    for e in generate("length", 20, 0):
        (text,) = _quoted(e.question)
        assert int(e.answer) == sum(1 for _ in text)
    for e in generate("compare", 60, 0):
        a, b = re.search(r": ([\d.]+) or ([\d.]+)\?", e.question).groups()
        larger = a if Decimal(a) > Decimal(b) else b
        smaller = b if larger == a else a
        assert e.answer == (larger if "larger" in e.question else smaller), e.question


def test_count_answers_include_zero_counts_and_sentences():
    exs = generate("count", 200, 0)
    assert any(e.answer == "0" for e in exs) and any("sentence" in e.question for e in exs)


def test_generate_mix_interleaves_and_validates():
    mix = generate_mix(["arith", "count"], 5, seed=0)
    assert [e.family for e in mix] == ["arith", "count", "arith", "count", "arith"]
    assert mix[0].id == generate("arith", 1, 0)[0].id
    with pytest.raises(ConfigError, match="unknown task family"):
        generate("poetry", 1)


@pytest.mark.parametrize("body, where", [
    ('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": null}\n', "null.jsonl:2"),
    ('{"question": "q", "answers": ["a", null]}\n', "null.jsonl:1"),
    ('[{"question": "q", "answer": "a"}, {"question": "q2", "answer": null}]', "null.jsonl: record 1"),
])
def test_null_gold_answer_is_an_error_naming_where(tmp_path, body, where):
    (tmp_path / "null.jsonl").write_text(body)
    with pytest.raises(DataError, match=f"{re.escape(where)}: 'answers?' is null"):
        load_examples(tmp_path / "null.jsonl")


def test_null_answer_in_hotpotqa_shape(tmp_path):
    rec = {"_id": "h", "question": "q", "answer": None, "context": [["T", ["s."]]]}
    (tmp_path / "hp.json").write_text(json.dumps([rec]))
    with pytest.raises(DataError, match="record 0: 'answer' is null"):
        load_examples(tmp_path / "hp.json")


def test_non_utf8_dataset_names_the_line(tmp_path):
    (tmp_path / "qa.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "\xff", "answer": "b"}\n')
    with pytest.raises(DataError, match="qa.jsonl:2: not UTF-8"):
        load_examples(tmp_path / "qa.jsonl")
