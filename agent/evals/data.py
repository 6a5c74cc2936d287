"""Eval datasets: one ``Example`` shape, loaders for common QA files, shape auto-detection.

Built-in shapes (``detect_format`` picks one from the first record):
- ``gsm8k``: ``question`` + ``answer`` with the final answer after ``####``
- ``hotpotqa``: ``question``, ``answer``, ``context`` as ``[title, [sentences]]`` pairs, ``type``
- ``musique``: ``question``, ``answer``, ``answer_aliases``, ``paragraphs`` of {title, paragraph_text},
  ``answerable``
- ``letters``: ``word`` (or ``text``), ``letter``, ``expected``: a letter-count question
- ``generic``: a question field and an answer field (a string or a list of aliases), with names
  found among common spellings or given explicitly

Files are JSONL, a JSON list, or a JSON object holding the list under ``data``. Nested fields stored
as Python literals in strings (as some exports do: ``"[['Title', ['...']]]"``) are parsed too.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import DataError

__all__ = [
    "FORMATS",
    "Example",
    "FieldNames",
    "collect_passages",
    "count_question",
    "detect_format",
    "load_examples",
    "located_records",
    "read_records",
    "write_corpus",
    "write_jsonl",
]


@dataclass
class Example:
    """One eval question. ``answer`` is the gold; ``aliases`` are other accepted spellings."""

    id: str
    question: str
    answer: str
    family: str = ""
    aliases: list[str] = field(default_factory=list)
    answerable: bool = True
    passages: list[dict[str, str]] = field(default_factory=list)  # {title, text}
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def golds(self) -> list[str]:
        return [self.answer, *[a for a in self.aliases if a != self.answer]]

    def to_dict(self, passages: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not passages:
            d.pop("passages")
        return d


@dataclass(frozen=True)
class FieldNames:
    """Explicit field names for the generic shape ('' = look among common spellings)."""

    question: str = ""
    answer: str = ""
    aliases: str = ""
    id: str = ""


_QUESTION_KEYS = ("question", "query", "problem", "prompt", "input")
_ANSWER_KEYS = ("answer", "answers", "gold", "target", "expected", "output", "label")
_ALIAS_KEYS = ("answer_aliases", "aliases")
_ID_KEYS = ("id", "_id", "qid", "uid")
_FAMILY_KEYS = ("family", "type", "category")


# -- reading files -------------------------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file, a JSON list, or a JSON object with a ``data`` list."""
    return [r for _, r in located_records(path)]


def located_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` pairs: ``where`` is ``file:LINE`` for JSONL, ``file: record N`` for JSON,
    so every error about a record can say where it is."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset not found: {p} (give a .jsonl/.json file or gen:FAMILY,...)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not UTF-8 text (byte {e.object[e.start:e.end]!a}); convert the file, "
                        "e.g. iconv -f latin1 -t utf-8") from None
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and p.suffix == ".json"):
        data = _loads(text, str(p))
        data = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a list of records (or an object with a 'data' list)")
        return [_check_record(r, f"{p}: record {i}") for i, r in enumerate(data)]
    return [_check_record(_loads(line, f"{p}:{i + 1}"), f"{p}:{i + 1}")
            for i, line in enumerate(text.splitlines()) if line.strip()]


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from e
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


def _check_record(r: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(r, dict):
        raise DataError(f"{where} is {type(r).__name__}, expected an object")
    return where, r


def _gold(value: Any, key: str = "answer") -> str:
    """A gold answer as text; a missing (null) one is an error, never the string "None"."""
    if value is None:
        raise DataError(f"{key!r} is null; give every question a gold answer, or drop the record")
    return str(value)


def _literal(value: Any) -> Any:
    """A list/dict/bool stored as a Python or JSON literal inside a string, parsed; else unchanged."""
    if isinstance(value, str) and (value.startswith(("[", "{")) or value in ("True", "False")):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _first(rec: dict[str, Any], keys: Iterable[str], explicit: str = "") -> str | None:
    if explicit:
        return explicit if explicit in rec else None
    return next((k for k in keys if k in rec), None)


# -- shapes --------------------------------------------------------------------------------------------
def detect_format(rec: dict[str, Any]) -> str:
    """The shape of a record: gsm8k, hotpotqa, musique, letters or generic."""
    if "paragraphs" in rec and "question" in rec:
        return "musique"
    if "context" in rec and "question" in rec and isinstance(_literal(rec["context"]), list):
        return "hotpotqa"
    if "letter" in rec and ("word" in rec or "text" in rec):
        return "letters"
    if isinstance(rec.get("answer"), str) and "####" in rec["answer"] and "question" in rec:
        return "gsm8k"
    return "generic"


def _gsm8k(rec: dict[str, Any], i: int, names: FieldNames) -> Example:
    solution = _gold(rec["answer"])
    final = solution.rsplit("####", 1)[-1].strip().replace(",", "")
    return Example(id=str(rec.get("id", i)), question=rec["question"], answer=final, family="gsm8k",
                   meta={"solution": solution})


def _hotpotqa(rec: dict[str, Any], i: int, names: FieldNames) -> Example:
    context = _literal(rec["context"])
    passages = [{"title": str(title), "text": "".join(sents) if isinstance(sents, list) else str(sents)}
                for title, sents in context]
    kind = rec.get("type")
    return Example(id=str(rec.get("_id", rec.get("id", i))), question=rec["question"], answer=_gold(rec["answer"]),
                   family=f"hotpotqa-{kind}" if kind else "hotpotqa", passages=passages,
                   meta={k: rec[k] for k in ("level", "type") if k in rec})


def _musique(rec: dict[str, Any], i: int, names: FieldNames) -> Example:
    paragraphs = _literal(rec["paragraphs"])
    passages = [{"title": str(p.get("title", "")), "text": str(p.get("paragraph_text", p.get("text", "")))}
                for p in paragraphs]
    aliases = _literal(rec.get("answer_aliases", []))
    answerable = _literal(rec.get("answerable", True))
    qid = str(rec.get("id", i))
    hops = qid.split("__", 1)[0] if "__" in qid else ""
    return Example(id=qid, question=rec["question"], answer=_gold(rec["answer"]),
                   aliases=[str(a) for a in aliases] if isinstance(aliases, list) else [],
                   answerable=answerable is not False, family=f"musique-{hops}" if hops else "musique",
                   passages=passages)


def count_question(text: str, letter: str) -> str:
    """The canonical letter-counting question of the ``letters`` shape (``agent.evals.tasks`` re-exports it)."""
    where = "word" if " " not in text.strip() else "sentence"
    return f'How many times does the letter "{letter}" appear in the {where} "{text}"?'


def _letters(rec: dict[str, Any], i: int, names: FieldNames) -> Example:
    text = str(rec.get("word", rec.get("text", "")))
    letter = str(rec["letter"])
    expected = rec.get("expected", rec.get("count", rec.get("answer")))
    if expected is None:
        expected = text.lower().count(letter.lower())
    return Example(id=str(rec.get("id", i)), question=count_question(text, letter), answer=str(expected),
                   family="count", meta={"text": text, "letter": letter})


def _generic(rec: dict[str, Any], i: int, names: FieldNames) -> Example:
    qk = _first(rec, _QUESTION_KEYS, names.question)
    ak = _first(rec, _ANSWER_KEYS, names.answer)
    if qk is None or ak is None:
        raise DataError(f"no question/answer field among {sorted(rec)}; name them with "
                        "--question-field and --answer-field")
    gold = _literal(rec[ak])
    golds = [_gold(g, ak) for g in gold] if isinstance(gold, list) else [_gold(gold, ak)]
    if not golds:
        raise DataError(f"empty answer list in field {ak!r}")
    alias_key = _first(rec, _ALIAS_KEYS, names.aliases)
    extra = _literal(rec[alias_key]) if alias_key else []
    golds += [str(a) for a in extra] if isinstance(extra, list) else []
    id_key = _first(rec, _ID_KEYS, names.id)
    fam_key = _first(rec, _FAMILY_KEYS)
    answerable = _literal(rec.get("answerable", True))
    return Example(id=str(rec[id_key]) if id_key else str(i), question=str(rec[qk]), answer=golds[0],
                   aliases=golds[1:], family=str(rec[fam_key]) if fam_key else "",
                   answerable=answerable is not False)


FORMATS: dict[str, Callable[[dict[str, Any], int, FieldNames], Example]] = {
    "gsm8k": _gsm8k,
    "hotpotqa": _hotpotqa,
    "musique": _musique,
    "letters": _letters,
    "generic": _generic,
}


def load_examples(path: str | Path, fmt: str = "auto", names: FieldNames | None = None) -> list[Example]:
    """Every example of a dataset file, in file order. ``fmt`` is a key of ``FORMATS`` or ``auto``."""
    names = names or FieldNames()
    records = located_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    if fmt == "auto":
        fmt = "generic" if names.question or names.answer else detect_format(records[0][1])
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    parse = FORMATS[fmt]
    stem = Path(path).stem
    out = []
    for i, (where, rec) in enumerate(records):
        try:
            ex = parse(rec, i, names)
        except DataError as e:
            raise DataError(f"{where}: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where} does not fit the {fmt} shape: {e!r}") from e
        if ex.id == str(i):
            ex.id = f"{stem}-{i}"
        ex.family = ex.family or stem
        out.append(ex)
    _check_unique(out, path)
    return out


def _check_unique(examples: list[Example], path: str | Path) -> None:
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{path}: duplicate question id {ex.id!r}; ids must be unique to resume runs")
        seen.add(ex.id)


# -- passages for an on-the-fly search index -----------------------------------------------------------
def collect_passages(examples: Iterable[Example]) -> list[dict[str, str]]:
    """The passages of all examples, each (title, text) once, in first-seen order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ex in examples:
        for p in ex.passages:
            key = (p["title"], p["text"])
            if key not in seen:
                seen.add(key)
                out.append({"title": p["title"], "text": p["text"]})
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line (parent folders created); shared by evals and training data."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def write_corpus(passages: list[dict[str, str]], path: str | Path) -> Path:
    return write_jsonl(passages, path)
