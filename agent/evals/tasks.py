"""Task generators for the families where a tool decides the answer.

``generate(family, n, seed)`` returns ``n`` examples of one family, deterministic by seed, and the
first ``k`` of ``generate(f, n, s)`` are the same for every ``n >= k`` (so a larger run extends a
smaller one and ids stay stable). Training data synthesis uses the same API.

Families:
- ``arith``: word problems over big numbers (products and sums a 135M model cannot do in its head)
- ``count``: how often a letter occurs in a word or a sentence ("r" in "strawberry")
- ``compare``: which decimal is larger or smaller (9.11 vs 9.9)
- ``length``: the number of characters of a random string
- ``reverse``: a random string reversed
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from agent.errors import ConfigError
from agent.evals.data import Example

__all__ = ["FAMILIES", "count_question", "generate", "generate_mix"]

_WORDS = (
    "strawberry", "banana", "mississippi", "bookkeeper", "committee", "raspberry", "parallel", "occurrence",
    "assessment", "tennessee", "balloon", "coffee", "programming", "necessary", "embarrass", "address",
    "possession", "success", "millennium", "accommodate", "cinnamon", "giraffe", "hippopotamus", "pepper",
    "referee", "lollipop", "vacuum", "bubblegum", "difficult", "woodpecker", "engineering", "peppermint",
    "aardvark", "kangaroo", "tomorrow", "pineapple", "alphabet", "apparently", "barrier", "squirrel",
)
_SENTENCE_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "every", "morning", "river", "green",
    "apple", "sells", "seven", "silver", "spoons", "across", "street", "letter", "happy", "people", "travel",
    "north", "summer", "rain", "falls", "softly", "on", "red", "roofs", "bright", "stars", "shine", "tonight",
)
_ITEMS = (
    ("factory", "makes", "bolts", "day"), ("bakery", "bakes", "rolls", "week"),
    ("farm", "harvests", "apples", "month"), ("printer", "prints", "pages", "hour"),
    ("mine", "extracts", "tons of ore", "shift"), ("server", "handles", "requests", "minute"),
)


# -- arithmetic word problems ------------------------------------------------------------------------
def _arith(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    kind = rng.choice(("mul", "add", "sub", "mul_sub"))
    place, verb, things, unit = rng.choice(_ITEMS)
    if kind == "mul":
        a, b = rng.randint(1_000, 99_999), rng.randint(12, 9_999)
        q = f"A {place} {verb} {a} {things} per {unit}. How many {things} does it make in {b} {unit}s?"
        return q, str(a * b), {"kind": kind}
    if kind == "add":
        a, b = rng.randint(100_000, 9_999_999), rng.randint(100_000, 9_999_999)
        q = (f"A warehouse holds {a} {things}. A delivery brings {b} more. "
             f"How many {things} does the warehouse hold now?")
        return q, str(a + b), {"kind": kind}
    if kind == "sub":
        a = rng.randint(1_000_000, 99_999_999)
        b = rng.randint(100_000, a - 1)
        q = f"A city had {a} residents. Then {b} of them moved away. How many residents remain?"
        return q, str(a - b), {"kind": kind}
    a, b = rng.randint(100, 9_999), rng.randint(12, 999)
    c = rng.randint(1, a * b - 1)
    q = (f"A {place} packs {a} crates with {b} {things} in each crate, then ships {c} {things}. "
         f"How many {things} are left?")
    return q, str(a * b - c), {"kind": kind}


# -- counting letters ----------------------------------------------------------------------------------
def count_question(text: str, letter: str) -> str:
    """The question used for letter counting (also by the letter-count dataset loader)."""
    where = "word" if " " not in text.strip() else "sentence"
    return f'How many times does the letter "{letter}" appear in the {where} "{text}"?'


def _count(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    if rng.random() < 0.5:
        text = rng.choice(_WORDS)
    else:
        text = " ".join(rng.choice(_SENTENCE_WORDS) for _ in range(rng.randint(5, 9)))
    letters = sorted(set(text.replace(" ", "")))
    letter = rng.choice(letters) if rng.random() < 0.85 else rng.choice(string.ascii_lowercase)
    return count_question(text, letter), str(text.lower().count(letter)), {"text": text, "letter": letter}


# -- comparing decimals --------------------------------------------------------------------------------
def _compare(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    whole = rng.randint(0, 99)
    while True:
        short = f"{whole}.{rng.randint(1, 9)}"
        long = f"{whole}.{rng.randint(10, 99)}"  # more digits, often the smaller number
        if float(short) != float(long):
            break
    a, b = (short, long) if rng.random() < 0.5 else (long, short)
    want = rng.choice(("larger", "smaller"))
    pick = max if want == "larger" else min
    q = f"Which number is {want}: {a} or {b}? Answer with the number."
    return q, pick((a, b), key=float), {"want": want}


# -- strings -------------------------------------------------------------------------------------------
def _random_string(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(8, 24)))


def _length(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    s = _random_string(rng)
    return f'How many characters are in the string "{s}"?', str(len(s)), {"text": s}


def _reverse(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    s = _random_string(rng)
    return f'Write the string "{s}" reversed (last character first).', s[::-1], {"text": s}


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str, dict[str, str]]]] = {
    "arith": _arith,
    "count": _count,
    "compare": _compare,
    "length": _length,
    "reverse": _reverse,
}


def generate(family: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of ``family`` (see ``FAMILIES``), deterministic by ``seed``."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")
    rng = random.Random(f"splice-tasks:{family}:{seed}")
    make = FAMILIES[family]
    out = []
    for i in range(n):
        question, answer, meta = make(rng)
        out.append(Example(id=f"{family}-{seed}-{i}", question=question, answer=answer, family=family,
                           meta=dict(meta)))
    return out


def generate_mix(families: list[str], n: int, seed: int = 0) -> list[Example]:
    """``n`` examples spread evenly over ``families``, interleaved (so a limit cuts every family)."""
    if not families:
        raise ConfigError("no task family given; e.g. gen:arith,count")
    per = [n // len(families) + (1 if i < n % len(families) else 0) for i in range(len(families))]
    lists = [generate(f, k, seed) for f, k in zip(families, per)]
    out: list[Example] = []
    for i in range(max(per, default=0)):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out
