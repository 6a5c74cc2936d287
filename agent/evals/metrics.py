"""Answer normalisation, scoring and voting: plain functions shared by evals and the RL trainer.

Reward functions follow the trainer convention ``fn(completions, answers, **kw) -> list[float]``.
A completion is the model's text (answer tags are looked for with the ``syntax`` keyword, default
``splice``), a ``Trajectory`` (its ``answer`` is used) or a chat message list (the last message's
content). An answer is a gold string or a list of aliases; any alias counts.

Scoring rules:
- numeric-aware accuracy: when the gold is a number, the prediction's number is compared by value
  ("1,000" == "1000.0", "$5" == "5", "50%" == "50"); a prediction that is not just a number is
  read by its last number (the GSM8K convention);
- otherwise SQuAD normalisation (lower case, no punctuation, no articles, single spaces) and exact
  match against any alias; token F1 is the best F1 over aliases;
- a gold marked unanswerable is matched by a refusal ("I don't know" and similar).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from agent.syntax import extract_answer, get_syntax

__all__ = [
    "accuracy_reward",
    "answer_key",
    "completion_answer",
    "exact_match",
    "exact_match_reward",
    "f1_reward",
    "is_correct",
    "is_refusal",
    "majority_vote",
    "normalize_answer",
    "parse_number",
    "pass_at_k",
    "refusal_reward",
    "token_f1",
]

Gold = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_WHOLE_NUMBER = re.compile(r"^(?P<sign>[-+−]?)\s*[$€£]?\s*(?P<num>\d[\d,]*(?:\.\d*)?|\.\d+)\s*%?\.?$")
_REFUSAL = re.compile(
    r"\b(i\s*(do\s*not|don'?t|dont)\s*know|i'?m\s*not\s*sure|i\s*am\s*not\s*sure|not\s*sure"
    r"|(can\s*not|cannot|can'?t|unable\s*to)\s*(be\s*)?(answer|determine|determined|find|tell|know|say)"
    r"|(not\s*enough|insufficient|no)\s*(information|context|data)"
    r"|unanswerable|no\s*answer|unknown|no\s*way\s*to\s*know|not\s*(mentioned|provided|stated))\b"
)


# -- normalisation ---------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_number(text: str, whole: bool = True) -> float | None:
    """The number ``text`` spells (``"$1,000.50"`` -> 1000.5), or None. With ``whole=False`` a text
    that is not just a number gives its last number instead."""
    s = text.strip().replace("\u2212", "-")
    m = _WHOLE_NUMBER.match(s)
    if m:
        value = _to_float(m.group("num"))
        return None if value is None else (-value if m.group("sign") in ("-", "−") else value)
    if whole:
        return None
    found = _NUMBER.findall(s)
    return _to_float(found[-1]) if found else None


def _to_float(s: str) -> float | None:
    s = s.replace(",", "")
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _as_list(gold: Gold) -> list[str]:
    return [gold] if isinstance(gold, str) else [g for g in gold if isinstance(g, str)]


def answer_key(answer: str | None) -> str | None:
    """The key under which answers vote together: a canonical number or the normalised text."""
    if answer is None or not answer.strip():
        return None
    value = parse_number(answer)
    if value is not None:
        return f"{value:.10g}"
    return normalize_answer(answer)


# -- scores ------------------------------------------------------------------------------------------
def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def is_correct(pred: str | None, gold: Gold, answerable: bool = True) -> bool:
    """Numeric-aware, alias-aware accuracy of one prediction (see the module docstring)."""
    if pred is None:
        return False
    if not answerable:
        return is_refusal(pred)
    for g in _as_list(gold):
        g_num = parse_number(g)
        if g_num is not None:
            p_num = parse_number(pred, whole=False)
            if p_num is not None and _numbers_equal(p_num, g_num):
                return True
        elif normalize_answer(pred) == normalize_answer(g):
            return True
    return False


def exact_match(pred: str | None, gold: Gold) -> float:
    """SQuAD exact match, best over aliases."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _as_list(gold)))


def token_f1(pred: str | None, gold: Gold) -> float:
    """SQuAD token F1, best over aliases."""
    if pred is None:
        return 0.0
    return max((_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in _as_list(gold)),
               default=0.0)


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def is_refusal(text: str | None) -> bool:
    """True when ``text`` declines to answer ("I don't know", "cannot be determined", ...)."""
    if not text:
        return False
    return bool(_REFUSAL.search(text.lower().replace("\u2019", "'")))


def majority_vote(answers: Iterable[str | None]) -> tuple[str | None, int]:
    """The most common answer by ``answer_key`` and its vote count. Missing answers abstain; a tie
    goes to the answer that reached the top count first (the earliest sample). Returns the first
    original spelling of the winning key, or ``(None, 0)`` when nobody answered."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    order: dict[str, int] = {}
    for i, a in enumerate(answers):
        key = answer_key(a)
        if key is None:
            continue
        counts[key] += 1
        first.setdefault(key, a)  # type: ignore[arg-type]
        order.setdefault(key, i)
    if not counts:
        return None, 0
    best = max(counts, key=lambda k: (counts[k], -order[k]))
    return first[best], counts[best]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n (got k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# -- rewards (completions, answers, **kw) -> list[float] ---------------------------------------------
def completion_answer(completion: Any, syntax: str = "splice") -> str | None:
    """The final answer of a completion: answer tags if present, else the whole text stripped."""
    if hasattr(completion, "answer") and hasattr(completion, "segments"):
        return completion.answer
    if isinstance(completion, list):  # chat messages
        completion = completion[-1]["content"] if completion else ""
    text = str(completion)
    found = extract_answer(text, get_syntax(syntax))
    return found if found is not None else (text.strip() or None)


def _rewards(score, completions: Sequence[Any], answers: Sequence[Gold], syntax: str) -> list[float]:
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    return [float(score(completion_answer(c, syntax), a)) for c, a in zip(completions, answers)]


def accuracy_reward(completions: Sequence[Any], answers: Sequence[Gold], syntax: str = "splice",
                    **kw: Any) -> list[float]:
    """1.0 where the completion's answer is correct (numeric- and alias-aware), else 0.0."""
    return _rewards(is_correct, completions, answers, syntax)


def exact_match_reward(completions: Sequence[Any], answers: Sequence[Gold], syntax: str = "splice",
                       **kw: Any) -> list[float]:
    return _rewards(exact_match, completions, answers, syntax)


def f1_reward(completions: Sequence[Any], answers: Sequence[Gold], syntax: str = "splice",
              **kw: Any) -> list[float]:
    """Token F1 of the completion's answer against the best alias."""
    return _rewards(token_f1, completions, answers, syntax)


def refusal_reward(completions: Sequence[Any], answers: Sequence[Gold], syntax: str = "splice",
                   **kw: Any) -> list[float]:
    """1.0 where the completion refuses (for questions built to be unanswerable)."""
    return _rewards(lambda p, _a: is_refusal(p), completions, answers, syntax)
