"""Task generators for the families where a tool decides the answer, in many phrasings.

``generate(family, n, seed, phrasing)`` returns ``n`` examples of one family, deterministic by seed,
and the first ``k`` of ``generate(f, n, s, p)`` are the same for every ``n >= k`` (so a larger run
extends a smaller one and ids stay stable). Training data synthesis uses the same API.

Each family has at least 15 question templates. A fixed share of them (``HELDOUT``, about a quarter,
written ``_H(...)`` at the end of each family's table) never appears in training data:
``phrasing="train"`` draws only the others, ``phrasing="heldout"`` only those, ``"all"`` any.
Reports give accuracy on the two apart; the held-out number is the one that says the model learnt
the task and not the template.
``agent eval gen:count@heldout`` selects a phrasing split (``gen:count`` is ``all``).

A second held-out set, ``fresh`` (``_F(...)`` after the ``_H`` ones: five per tool family, one per
expression kind for arithmetic), was written before training the adapter it first measured: the
``_H`` templates had been in view while later training templates were written, the ``_F`` ones had
not. A third, ``fresh2`` (``_F2(...)``, the same shape), was written after the shipped adapter's
training data, before any model's answers on it were seen. A fourth, ``fresh3`` (``_F3(...)``, the
same shape), was written before the adapter that first measured it was trained, after the misses of
the shipped one on ``fresh2`` had been read. No held-out split appears in training data; ``"all"``
draws from every template.

Families (``meta`` holds what the answer is computed from; ``meta["template"]`` the template index):
- ``arith``: products, sums, differences, integer division, percentages and two-step expressions
  over big numbers, bare or as word problems, numbers sometimes written with separators (12,345)
- ``count``: how often a letter occurs in a word (common, rare, other languages; any letter case)
- ``count_name``: the same in a person's name
- ``count_text``: the same in a sentence or a paragraph of several sentences
- ``compare``: which of two decimals is larger or smaller (different lengths, negatives)
- ``length``: the number of characters of a string without spaces
- ``reverse``: a string reversed
- ``char``: the n-th character of a word
- ``plain``: questions a small model answers without a tool (facts, definitions, greetings);
  an eval measures that no tool is called
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.evals.data import Example, count_question  # count_question: re-exported, it lives with its loader

__all__ = ["ARITH_KINDS", "FAMILIES", "FRESH", "FRESH2", "FRESH3", "HELDOUT", "PHRASINGS", "TOOL_FAMILIES",
           "arith_question", "count_question", "generate", "generate_mix", "parse_spec"]

PHRASINGS = ("all", "train", "heldout", "fresh", "fresh2", "fresh3")

# -- vocabularies -----------------------------------------------------------------------------------
_WORDS = (
    "strawberry", "banana", "mississippi", "bookkeeper", "committee", "raspberry", "parallel", "occurrence",
    "assessment", "tennessee", "balloon", "coffee", "programming", "necessary", "embarrass", "address",
    "possession", "success", "millennium", "accommodate", "cinnamon", "giraffe", "hippopotamus", "pepper",
    "referee", "lollipop", "vacuum", "bubblegum", "difficult", "woodpecker", "engineering", "peppermint",
    "aardvark", "kangaroo", "tomorrow", "pineapple", "alphabet", "apparently", "barrier", "squirrel",
    "onomatopoeia", "rhythm", "queue", "syzygy", "bureaucracy", "entrepreneur", "cappuccino", "chrysanthemum",
    "xylophone", "quizzical", "juxtaposition", "abracadabra", "boomerang", "cucumber", "dandelion",
    "elephant", "flabbergasted", "grasshopper", "hullabaloo", "igloo", "jellyfish", "kayak", "labyrinth",
    "marshmallow", "nevertheless", "obsessed", "pterodactyl", "quintessential", "rollercoaster", "sassafras",
    "tattoo", "umbrella", "voodoo", "whippersnapper", "yesterday", "zigzag", "bandwagon", "caterpillar",
    "Schmetterling", "Kindergarten", "Donaudampfschiff", "murcielago", "ferrocarril", "arrivederci",
    "grenouille", "pamplemousse", "Zusammenarbeit", "Eichhoernchen", "karaoke", "tsunami", "Mitternacht",
    "Reykjavik", "Massachusetts", "Albuquerque", "Connecticut", "Cincinnati", "Philadelphia", "Worcestershire",
)
_FIRST = ("Anna", "Barbara", "Rebecca", "Oliver", "Mohammed", "Priya", "Jean-Luc", "Siobhan", "Bartholomew",
          "Yolanda", "Hannah", "Isabella", "Giuseppe", "Olumide", "Svetlana", "Rosalind", "Maximilian",
          "Penelope", "Theodore", "Annabelle", "Esperanza", "Wolfgang", "Mei", "Ravi", "Chidinma", "Lars",
          "Gwendolyn", "Marcus", "Fatima", "Joaquin", "Ingrid", "Kwame", "Aurelia", "Rupert", "Tallulah")
_LAST = ("Streisand", "Richardson", "Abernathy", "Papadopoulos", "Kowalski", "Nakamura", "Okonkwo",
         "Fitzgerald", "Rasmussen", "Montgomery", "Bellamy", "Hernandez", "Villanueva", "Schwarzenegger",
         "Tchaikovsky", "Mbappe", "Lindqvist", "Oyelaran", "Castellanos", "Worthington", "Ferraro", "Ivanova",
         "Delacroix", "Babbage", "Lovelace", "Marsh", "Penn", "Krishnan", "Adebayo", "Haverford")
_SUBJECTS = ("the quick brown fox", "my grandmother", "a tall sailor", "every student", "the old baker",
             "our neighbor", "a small robot", "the river", "this city", "the happy puppy", "a famous painter",
             "the red train", "my sister", "the library", "a yellow balloon", "the morning sun", "the teacher")
_VERBS = ("jumps over", "walks past", "paints", "carries", "follows", "watches", "repairs", "visits", "sells",
          "borrows", "finds", "remembers", "describes", "sings about", "photographs", "builds", "cleans")
_OBJECTS = ("the lazy dog", "seven silver spoons", "a bright green apple", "the sleepy village",
            "three blue bottles", "a stormy harbor", "the broken umbrella", "eleven purple pencils",
            "a quiet mountain lake", "the winter market", "a basket of strawberries", "the noisy parrot",
            "two wooden boxes", "the summer garden", "a pile of letters", "the marble staircase")
_TAILS = ("", " every morning", " before dinner", " in the rain", " after school", " on Sundays",
          " with great care", " near the station", " all summer long", " without a word")
_ITEMS = (("factory", "makes", "bolts", "day"), ("bakery", "bakes", "rolls", "week"),
          ("farm", "harvests", "apples", "month"), ("printer", "prints", "pages", "hour"),
          ("mine", "extracts", "tons of ore", "shift"), ("server", "handles", "requests", "minute"),
          ("workshop", "builds", "chairs", "year"), ("orchard", "grows", "pears", "season"))


# -- templates --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _T:
    text: str
    kind: str = ""  # arith: the expression kind; compare: "larger"/"smaller"/"" (word picked)
    split: str = "train"  # "train", or the held-out set it belongs to: never in training data


def _H(text: str, kind: str = "") -> _T:
    """A held-out template."""
    return _T(text, kind, "heldout")


def _F(text: str, kind: str = "") -> _T:
    """A template of the ``fresh`` held-out split (see the module docstring)."""
    return _T(text, kind, "fresh")


def _F2(text: str, kind: str = "") -> _T:
    """A template of the ``fresh2`` held-out split (see the module docstring)."""
    return _T(text, kind, "fresh2")


def _F3(text: str, kind: str = "") -> _T:
    """A template of the ``fresh3`` held-out split (see the module docstring)."""
    return _T(text, kind, "fresh3")


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
    return s[0].upper() + s[1:]


def _cased(rng: random.Random, word: str) -> str:
    r = rng.random()
    return word.capitalize() if r < 0.2 else word.upper() if r < 0.27 else word


def _letter(rng: random.Random, text: str) -> str:
    letters = sorted({c.lower() for c in text if c.isalpha()})
    letter = rng.choice(letters) if rng.random() < 0.85 else rng.choice(string.ascii_lowercase)
    return letter.upper() if rng.random() < 0.25 else letter


# -- arithmetic ---------------------------------------------------------------------------------------
_ARITH = (
    _T("What is {a} * {b}?", "mul"),
    _T("Compute {a} times {b}.", "mul"),
    _T("Multiply {a} by {b}.", "mul"),
    _T("A {place} {verb} {a} {things} per {unit}. How many {things} does it make in {b} {unit}s?", "mul"),
    _T("Each of {b} boxes holds {a} marbles. How many marbles are there in total?", "mul"),
    _T("What is {a} + {b}?", "add"),
    _T("Add {a} and {b}.", "add"),
    _T("A warehouse holds {a} {things}. A delivery brings {b} more. How many {things} does the warehouse "
       "hold now?", "add"),
    _T("Sam saved {a} dollars last year and {b} dollars this year. How much did Sam save altogether?", "add"),
    _T("What is {a} - {b}?", "sub"),
    _T("Subtract {b} from {a}.", "sub"),
    _T("A city had {a} residents. Then {b} of them moved away. How many residents remain?", "sub"),
    _T("A {place} packs {a} crates with {b} {things} in each crate, then ships {c} {things}. How many "
       "{things} are left?", "mul_sub"),
    _T("Calculate {a} * {b} - {c}.", "mul_sub"),
    _T("What is ({a} + {b}) * {c}?", "add_mul"),
    _T("{a} eggs are packed into cartons of {b}. How many full cartons are there?", "floordiv"),
    _T("What is {a} divided by {b}, rounded down to a whole number?", "floordiv"),
    _T("What is {p}% of {a}?", "percent"),
    _T("A shop takes {p}% off a price of {a} dollars. How many dollars is the discount?", "percent"),
    _T("Find {a} multiplied by {b}.", "mul"),
    _T("A ticket costs {b} dollars. How much do {a} tickets cost?", "mul"),
    _T("Find the sum of {a} and {b}.", "add"),
    _T("A library keeps {a} books in one building and {b} in another. How many books does it have in all?", "add"),
    _T("How much larger is {a} than {b}?", "sub"),
    _T("A tank held {a} litres and {b} litres were drained. How many litres are left?", "sub"),
    _T("A shelf holds {a} red books and {b} blue books, and there are {c} identical shelves. How many books "
       "are on all the shelves?", "add_mul"),
    _T("Each crate has {a} apples and {b} oranges. How many pieces of fruit are in {c} crates?", "add_mul"),
    _T("Compute ({a} + {b}) times {c}.", "add_mul"),
    _T("A {place} {verb} {a} {things} per {unit} for {b} {unit}s, and {c} of them are faulty. How many good "
       "{things} are there?", "mul_sub"),
    _T("How many groups of {b} can be made from {a} items?", "floordiv"),
    _T("Calculate {p} percent of {a}.", "percent"),
    _T("A train carries {a} passengers on every trip and makes {b} trips. How many passengers ride in all?", "mul"),
    _T("There are {b} rows with {a} seats in each row. How many seats are there?", "mul"),
    _T("Work out {a} x {b}.", "mul"),
    _T("{a} multiplied by {b} equals what?", "mul"),
    _T("A farmer picked {a} apples in the morning and {b} in the afternoon. How many apples were picked?", "add"),
    _T("Two cities have {a} and {b} inhabitants. What is their combined population?", "add"),
    _T("What is the total of {a} and {b}?", "add"),
    _T("A company earned {a} dollars and spent {b} dollars. How much money is left over?", "sub"),
    _T("What is the difference between {a} and {b}?", "sub"),
    _T("A road is {a} metres long and {b} metres are paved. How many metres are not paved yet?", "sub"),
    _T("Compute {a} times {b}, then subtract {c}.", "mul_sub"),
    _T("A club orders {a} boxes of {b} cups, and {c} cups break on the way. How many cups are whole?", "mul_sub"),
    _T("A farm has {a} hens and {b} ducks, and each bird eats {c} grams of grain a day. How many grams of grain "
       "do the birds eat per day?", "add_mul"),
    _T("Add {a} and {b}, then multiply the sum by {c}.", "add_mul"),
    _T("A bakery makes {a} muffins and {b} cookies a day. How many treats does it make in {c} days?", "add_mul"),
    _T("A hall has {a} chairs on the floor and {b} on the balcony, and the same show runs {c} times, full "
       "each time. How many seats are filled in total?", "add_mul"),
    _T("{a} people need a ride and each van seats {b}. How many vans can be filled completely?", "floordiv"),
    _T("Divide {a} by {b} and drop the remainder.", "floordiv"),
    _T("Find {p}% of {a}.", "percent"),
    _T("{p}% of the {a} voters chose the new mayor. How many voters is that?", "percent"),
    _T("A shop gets {a} cases of {b} bottles and sells {c} bottles. How many bottles are still in the shop?",
       "mul_sub"),
    _T("A teacher hands out {a} bags with {b} beads in each bag, and {c} beads get lost. How many beads are left?",
       "mul_sub"),
    _T("{a} boxes each hold {b} nails. After {c} nails are used, how many nails remain?", "mul_sub"),
    _T("A baker fills {a} trays with {b} rolls each and then gives {c} rolls to a neighbour. How many rolls "
       "does the baker still have?", "mul_sub"),
    _T("A cinema sold {a} seats for the early show and {b} for the late show, and every seat cost {c} dollars. "
       "How much money came in?", "add_mul"),
    _T("On Monday {a} visitors came and on Tuesday {b} more came; each paid {c} dollars. How many dollars were "
       "paid in total?", "add_mul"),
    _T("Pack one has {a} cards and pack two has {b} cards. How many cards are in {c} copies of both packs?",
       "add_mul"),
    _T("A price of {a} dollars goes up by {p}%. By how many dollars does it go up?", "percent"),
    _T("Of the {a} seeds planted, {p}% sprouted. How many seeds sprouted?", "percent"),
    _T("A savings account holds {a} dollars and earns {p}% interest. How many dollars of interest is that?",
       "percent"),
    _T("A flock of {a} birds shrank by {p}% over the winter. How many birds were lost?", "percent"),
    _T("A company with {a} employees adds {p}% more staff. How many new employees is that?", "percent"),
    _T("Remove {b} from {a}. What is left?", "sub"),
    _T("Start with {a} and take off {b}. What remains?", "sub"),
    _T("If {b} is deducted from {a}, what is the result?", "sub"),
    _T("What number is {b} less than {a}?", "sub"),
    # held out (``_H``: never in training)
    _H("What is the product of {a} and {b}?", "mul"),
    _H("How much is {a} plus {b}?", "add"),
    _H("What do you get if you take {b} away from {a}?", "sub"),
    _H("A school buys {a} packs of {b} pencils and then gives away {c} pencils. How many pencils does it "
       "keep?", "mul_sub"),
    _H("Share {a} stickers equally among {b} children. How many whole stickers does each child get?",
       "floordiv"),
    _H("A town of {a} people grew by {p}% this year. How many new people is that?", "percent"),
    _H("Two trucks carry {a} and {b} bricks, and {c} such pairs of trucks make the trip. How many bricks "
       "arrive?", "add_mul"),
    _H("A stadium sold {a} tickets on Friday and {b} on Saturday, each at {c} dollars. How many dollars did "
       "the tickets bring in?", "add_mul"),
    _H("If one crate weighs {a} grams, how many grams do {b} crates weigh?", "mul"),
    # fresh held-out (``_F``: never in training; written before the adapter they first measured)
    _F("I bought {b} chairs at {a} dollars apiece. What did I pay in total?", "mul"),
    _F("Tally up {a} and {b} for me.", "add"),
    _F("My account had {a} dollars and I withdrew {b}. What is the balance now?", "sub"),
    _F("A hotel has {a} floors with {b} lamps on each floor, and {c} lamps are broken. How many lamps still "
       "work?", "mul_sub"),
    _F("Two shops sell {a} and {b} mugs a month. How many mugs do the two shops sell in {c} months?", "add_mul"),
    _F("With whole-number division, what is {a} over {b}?", "floordiv"),
    _F("A recipe uses {p}% of a {a} gram bag of flour. How many grams does it use?", "percent"),
    # third held-out set (``_F2``)
    _F2("A pallet carries {a} tiles. How many tiles are on {b} pallets?", "mul"),
    _F2("Put {a} and {b} together. What number do you get?", "add"),
    _F2("A reservoir is at {a} litres and loses {b} litres overnight. What does it hold in the morning?", "sub"),
    _F2("{a} students each bring {b} bottle caps for a project, and {c} caps are thrown out. How many caps are "
        "kept?", "mul_sub"),
    _F2("A printer uses {a} sheets on Mondays and {b} sheets on Tuesdays. Over {c} weeks, how many sheets is "
        "that for those two days?", "add_mul"),
    _F2("How many complete teams of {b} can be formed from {a} players?", "floordiv"),
    _F2("A phone costs {a} dollars and the tax on it is {p}%. How many dollars of tax is paid?", "percent"),
    # fourth held-out set (``_F3``)
    _F3("Each of {b} buses carries {a} passengers. How many passengers ride in all?", "mul"),
    _F3("What total do {a} and {b} make?", "add"),
    _F3("A warehouse held {a} boxes until {b} were shipped out. How many boxes are still there?", "sub"),
    _F3("A baker fills {a} trays with {b} rolls each, then {c} rolls get burnt. How many good rolls are left?",
        "mul_sub"),
    _F3("A gardener plants {a} tulips and {b} roses in each of {c} beds. How many flowers does she plant "
        "altogether?", "add_mul"),
    _F3("{a} litres of juice go into jugs of {b} litres. How many jugs can be filled to the top?", "floordiv"),
    _F3("The sofa is {a} dollars and I get {p}% knocked off. How many dollars do I save?", "percent"),
)

_ARITH_EXPR = {"mul": "{a} * {b}", "add": "{a} + {b}", "sub": "{a} - {b}", "mul_sub": "{a} * {b} - {c}",
               "add_mul": "({a} + {b}) * {c}", "floordiv": "{a} // {b}", "percent": "{a} * {p} / 100"}
ARITH_KINDS = tuple(_ARITH_EXPR)  # the expression kinds of arithmetic questions


def _arith_numbers(rng: random.Random, kind: str) -> dict[str, int]:
    if kind == "mul":
        return {"a": rng.randint(1_000, 99_999), "b": rng.randint(12, 9_999)}
    if kind == "add":
        return {"a": rng.randint(100_000, 9_999_999), "b": rng.randint(100_000, 9_999_999)}
    if kind == "sub":
        a = rng.randint(1_000_000, 99_999_999)
        return {"a": a, "b": rng.randint(100_000, a - 1)}
    if kind == "mul_sub":
        a, b = rng.randint(100, 9_999), rng.randint(12, 999)
        return {"a": a, "b": b, "c": rng.randint(1, a * b - 1)}
    if kind == "add_mul":
        return {"a": rng.randint(100, 99_999), "b": rng.randint(100, 99_999), "c": rng.randint(3, 999)}
    if kind == "floordiv":
        return {"a": rng.randint(10_000, 9_999_999), "b": rng.randint(7, 999)}
    p = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 45, 60, 75))
    return {"a": rng.randint(10, 99_999) * 20, "p": p}  # a multiple of 20: p% of it is whole for these p


def _number_text(rng: random.Random, n: int, commas: bool) -> str:
    return f"{n:,}" if commas and n >= 10_000 else str(n)


def _arith(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    nums = _arith_numbers(rng, t.kind)
    place, verb, things, unit = rng.choice(_ITEMS)
    commas = rng.random() < 0.3
    shown = {k: (str(v) if k == "p" else _number_text(rng, v, commas)) for k, v in nums.items()}
    q = t.text.format(place=place, verb=verb, things=things, unit=unit, **shown)
    expr = _ARITH_EXPR[t.kind].format(**nums)
    value = eval(expr, {"__builtins__": {}})  # noqa: S307 - our own digits and operators only
    answer = str(int(value)) if float(value).is_integer() else str(value)
    return q, answer, {"kind": t.kind, "expr": expr, **{k: str(v) for k, v in nums.items()}}


def arith_question(rng: random.Random, template: str, kind: str) -> tuple[str, str, dict]:
    """(question, answer, meta) for an arithmetic ``template`` of expression ``kind`` (a key of
    ``ARITH_KINDS``) with slots ``{a}``, ``{b}``, ``{c}``, ``{p}``: numbers drawn as the family's own
    templates draw them. Training data composes more word problems with it (``train.scenes``)."""
    if kind not in _ARITH_EXPR:
        raise ConfigError(f"unknown arithmetic kind {kind!r}; choose from {', '.join(_ARITH_EXPR)}")
    return _arith(rng, _T(template, kind))


# -- letter counting ------------------------------------------------------------------------------------
_COUNT = (
    _T('How many times does the letter "{l}" appear in the word "{t}"?'),
    _T("How many {l}'s are in {t}?"),
    _T("How many {l}'s are there in the word {t}?"),
    _T('Count the letter {l} in "{t}".'),
    _T('In the word "{t}", how many times does "{l}" occur?'),
    _T("How often does the letter {l} appear in {t}?"),
    _T("Count how many times the letter {l} shows up in the word {t}."),
    _T("What is the number of {l}'s in '{t}'?"),
    _T('Tell me how many "{l}" characters the word "{t}" has.'),
    _T('Number of occurrences of "{l}" in "{t}"?'),
    _T("How many times is the letter {l} used in {t}?"),
    _T("Give the number of times {l} occurs in the word {t}."),
    _T("How many {l}s are in the word {t}?"),
    _T("Count the {l}s in {t}."),
    _T("How many {l}'s does {t} have?"),
    _T("Does {t} contain the letter {l}? If so, how many times?"),
    _T("How many times can you find '{l}' in {t}?"),
    _T("In {t}, count the occurrences of the letter {l}."),
    _T("Spell out {t} and count the letter {l}."),
    _T('How many "{l}"s are in "{t}"?'),
    _T("Count the number of '{l}' letters in {t}."),
    _T("In {t}, how many {l}'s are there?"),
    _T("What's the count of the letter {l} in the word {t}?"),
    _T("Please count how many {l} letters appear in {t}."),
    _T("Tally the {l}'s in the word {t}."),
    _T("How many occurrences of {l} does the word {t} contain?"),
    _T("How many {l} are there in {t}?"),
    _T("Total number of letter {l} in '{t}'?"),
    _T("The word of the day is {t}. How many times does it use the letter {l}?"),
    _T("Look closely at {t} and tell me how many {l}'s it has."),
    # held out
    _H("I'm spelling {t}. How many {l}'s will I write?"),
    _H("Letter count: how many '{l}' in '{t}'?"),
    _H('Can you count the {l}\'s in the word "{t}"?'),
    _H("{t}: how many letter {l}s does it contain?"),
    _H("Quick question: the word {t} has how many {l}s in it?"),
    _H('Find how many times {l} is in "{t}".'),
    # fresh held-out
    _F("Check the word {t} for me: how many {l}'s?"),
    _F("If you scan {t} letter by letter, how many times do you meet {l}?"),
    _F("I wonder how many {l}'s the word {t} has."),
    _F("Occurrences of the letter '{l}' in the word {t}, please."),
    _F("{t} - tell me the {l} count."),
    _F2("Within the word {t}, what is the tally of {l}'s?"),
    _F2("Go through {t} and count its {l}'s."),
    _F2("How frequently does {l} turn up in {t}?"),
    _F2("Spot the {l}'s in {t}: how many are there?"),
    _F2("{t} has a certain number of {l}'s. Which number?"),
    _F3("Tell me how many {l}'s the word {t} contains."),
    _F3("Letter {l}, word {t}: how many occurrences?"),
    _F3("I'd like the count of {l} in {t}."),
    _F3("How often is the letter {l} used when spelling {t}?"),
    _F3("Number of {l}'s in {t}, please."),
)

_COUNT_NAME = (
    _T('How many times does the letter "{l}" appear in the name "{t}"?'),
    _T("How many {l}'s are in the name {t}?"),
    _T("My name is {t}. How many {l}'s are in it?"),
    _T('Count the letter {l} in the name "{t}".'),
    _T('In the name "{t}", how many times does "{l}" occur?'),
    _T("How often does {l} appear in the full name {t}?"),
    _T("Count how many times the letter {l} shows up in the name {t}."),
    _T("What is the number of {l}'s in the name '{t}'?"),
    _T('Tell me how many "{l}" letters the name "{t}" has.'),
    _T("Our new colleague is called {t}. How many times does the letter {l} appear in that name?"),
    _T("How many times is the letter {l} used when writing the name {t}?"),
    _T("Give the number of {l}'s in {t}'s name."),
    _T("How many {l}s are in the name {t}?"),
    _T("Count the {l}s in the name {t}."),
    _T("{t} is my friend's name. How many times does {l} appear in it?"),
    _T("How many times does {l} occur in the name '{t}'?"),
    _T("The customer's name is {t}. Count the letter {l} in it."),
    _T('How many "{l}"s does the name "{t}" contain?'),
    _T("How many {l}'s are in the name of {t}?"),
    _T("Looking at the name {t}, count the letter {l}."),
    _T("The passenger list shows {t}. How many {l}'s are in this name?"),
    _T("How many times does the letter {l} appear in {t}'s full name?"),
    _T("Count the {l}'s in the name written below.\n{t}"),
    _T("The new student is {t}. How many letters {l} does that name have?"),
    _T("In the name {t}, what is the count of {l}?"),
    _T("{t} won the chess tournament. How often does {l} occur in the winner's name?"),
    _T("{t} booked a table for two. Count the letter {l} in the name on the booking."),
    _T("{t} sent me an email. How many {l}'s are in the sender's name?"),
    _T("{t} is at the door. Count the letter {l} in the visitor's name."),
    _T("I met {t} yesterday. How many {l}s does that name contain?"),
    _T("{t} wrote this book. How many {l}'s are in the writer's name?"),
    _T("Count {l} in {t}'s name."),
    _T("Please count the letter {l} in the name {t}, upper or lower case."),
    # held out
    _H("If I write out the name {t}, how many {l}'s do I write?"),
    _H("Name: {t}. Letter: {l}. How many?"),
    _H('The author is "{t}". Count the {l}\'s in the name.'),
    _H("How many letter {l}s are in the person's name {t}?"),
    _H("{t} signed the form. How many {l}'s are in that signature?"),
    _H("Count {l} in the name {t}, ignoring case."),
    # fresh held-out
    _F("My cousin goes by {t}. How many {l}'s are in that name?"),
    _F("The contract was drawn up by {t}. How many times does {l} appear in their name?"),
    _F("Guest list entry: {t}. Number of {l}'s?"),
    _F("How many {l}'s would I type when I enter the name {t}?"),
    _F("A parcel is addressed to {t}. Count the {l}'s in the addressee's name."),
    _F2("Our landlord's name is {t}. How many {l}'s does it have?"),
    _F2("Count the {l}'s in this name: {t}"),
    _F2("On the name tag: {t}. How many times is {l} in it?"),
    _F2("The award went to {t}. How frequently does {l} occur in the name?"),
    _F2("For the name {t}, give the number of {l}'s."),
    _F3("Our new neighbour introduced herself as {t}. How many {l}'s does her name have?"),
    _F3("Spelled out in full, {t} contains {l} how many times?"),
    _F3("{t} is on the guest list. Count the {l}'s in that name."),
    _F3("I'm engraving {t} on a trophy. How many {l}'s will the engraver cut?"),
    _F3("The new hire is {t}. Tell me how many {l}'s the name has."),
)

_COUNT_TEXT = (
    _T('How many times does the letter "{l}" appear in the sentence "{t}"?'),
    _T('Count the letter {l} in this sentence: "{t}"'),
    _T("How many {l}'s are in the following text? {t}"),
    _T('In the text "{t}", how many times does the letter "{l}" occur?'),
    _T("Here is a paragraph:\n\n{t}\n\nHow many times does the letter {l} occur in it?"),
    _T('How often does the letter {l} appear in "{t}"?'),
    _T("Count every {l} (upper or lower case) in this text: {t}"),
    _T("What is the number of {l}'s in the passage below?\n{t}"),
    _T('Tell me how many "{l}" characters there are in "{t}".'),
    _T("Text: {t}\nQuestion: how many times does the letter {l} appear in the text?"),
    _T("How many times is the letter {l} used in this sentence? {t}"),
    _T("Give the number of occurrences of {l} in the following: {t}"),
    _T("How many {l}s are in this sentence: {t}"),
    _T("Count the {l}s in the following text.\n\n{t}"),
    _T('Here is a sentence: "{t}" How many times does {l} appear?'),
    _T("{t}\n\nHow many times does the letter {l} appear above?"),
    _T("Please count the letter {l} in the text below.\n{t}"),
    _T('Count the occurrences of "{l}" in: {t}'),
    _T("How many times does {l} appear in the following sentence? {t}"),
    _T("Here is some text: {t}\nCount the letter {l}."),
    _T('Count how often the letter {l} occurs in this passage: "{t}"'),
    _T("In the paragraph below, how many {l}'s are there?\n\n{t}"),
    _T("Please tell me the number of times the letter {l} appears in: '{t}'"),
    _T("Count all the {l}'s, upper and lower case, in this sentence: {t}"),
    _T("What is the total count of the letter {l} in this text?\n{t}"),
    _T("A line from the story: {t} How often does {l} appear in that line?"),
    _T("The poster says: {t} How many {l}'s does the poster have?"),
    _T('A label reads "{t}" How many times does {l} occur on the label?'),
    _T("Someone wrote: {t}\nHow many {l}'s are in what they wrote?"),
    _T("{t}\nCount the letter {l} in the lines above."),
    _T('My diary entry: "{t}" Count the {l}\'s in it.'),
    # held out
    _H('My note says "{t}" How many {l}\'s did I write?'),
    _H("Read this and count the letter {l}:\n\n{t}"),
    _H("{t}\n\nIn the text above, how many {l}'s are there?"),
    _H("Count the {l}s in the quote \"{t}\""),
    _H("The sign reads: {t} How many {l}s are on the sign?"),
    _H("Text:\n{t}\nCount the letter {l} (any case)."),
    # fresh held-out
    _F("Here is a passage:\n{t}\nHow often does {l} occur in it?"),
    _F('Someone texted me "{t}" Tell me how many {l}\'s that message contains.'),
    _F("Please count each {l} in the following lines. {t}"),
    _F("The email said: {t} How many {l}'s were in the email?"),
    _F("Check this paragraph for the letter {l} and give the count: {t}"),
    _F2("In the following sentence, tally the letter {l}: {t}"),
    _F2("Below is a short text. Count its {l}'s.\n{t}"),
    _F2('"{t}" - how many {l}\'s is that?'),
    _F2("My teacher wrote on the board: {t} How many times did she write {l}?"),
    _F2("How many {l}'s appear, in either case, in the text that follows? {t}"),
    _F3("Going through the lines below, add up every {l} you see.\n{t}"),
    _F3("Here is a paragraph.\n{t}\nHow many {l}'s does it contain?"),
    _F3("Tally, ignoring case, the {l}'s in this passage.\n{t}"),
    _F3("A note says: {t} How many {l}'s are in the note?"),
    _F3("Text: {t}\nQuestion: how many times does {l} occur?"),
)


def _word(rng: random.Random) -> str:
    return _cased(rng, rng.choice(_WORDS))


def _name(rng: random.Random) -> str:
    first = rng.choice(_FIRST)
    if rng.random() < 0.25:
        first += " " + rng.choice(_FIRST)
    return f"{first} {rng.choice(_LAST)}"


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 4)))


def _counting(source: Callable[[random.Random], str]) -> Callable[[random.Random, _T], tuple[str, str, dict]]:
    def make(rng: random.Random, t: _T) -> tuple[str, str, dict]:
        text = source(rng)
        letter = _letter(rng, text)
        q = t.text.format(l=letter, t=text)
        return q, str(text.lower().count(letter.lower())), {"text": text, "letter": letter}
    return make


# -- comparing decimals --------------------------------------------------------------------------------
_LARGER = ("larger", "bigger", "greater")
_SMALLER = ("smaller", "less", "lower")
_COMPARE = (
    _T("Which number is {w}: {a} or {b}? Answer with the number."),
    _T("Which is {w}, {a} or {b}?"),
    _T("Is {a} or {b} the {w} number?"),
    _T("{a} vs {b}: which one is {w}?"),
    _T("Between {a} and {b}, which value is {w}?"),
    _T("Pick the {w} number: {a} or {b}."),
    _T("Of {a} and {b}, which is {w}?"),
    _T("Compare {a} and {b}. Which one is {w}?"),
    _T("What is the maximum of {a} and {b}?", "larger"),
    _T("What is the minimum of {a} and {b}?", "smaller"),
    _T("I have two numbers, {a} and {b}. Which is {w}?"),
    _T("Which is the {w} value: {a} or {b}?"),
    _T("Which of {a} and {b} is {w}?"),
    _T("{a} or {b}: which is {w}?"),
    _T("Select the {w} of {a} and {b}."),
    _T("Is {a} {w} than {b}, or the other way round? Give the {w} number."),
    _T("Find the {w} of the two numbers {a} and {b}."),
    _T("{a} or {b} - which number is {w}?"),
    _T("Which one is {w}? {a} or {b}"),
    _T("Please compare {a} with {b} and give the {w} number."),
    # held out
    _H("Tell me which of these two is {w}: {a}, {b}."),
    _H("Look at {a} and {b}. Which of them is {w}?"),
    _H("Out of {a} and {b}, name the {w} one."),
    _H("Which should come first if we want the {w} number, {a} or {b}?"),
    _H("Here are two numbers: {a} and {b}. Tell me the {w}."),
    _H("Decide which is {w}: {a} versus {b}."),
    # fresh held-out
    _F("Two readings: {a} and {b}. Report the {w} reading."),
    _F("I can't tell which is {w}, {a} or {b}. Can you?"),
    _F("Sort out which is {w} for me: {a} against {b}."),
    _F("Given {a} and {b}, return the {w}."),
    _F("Which of the pair {a} / {b} is {w}?"),
    _F2("{a} and {b} were measured. Which measurement is {w}?"),
    _F2("Is {b} {w} than {a}? Reply with whichever number is {w}."),
    _F2("Help me choose the {w} number out of {a} and {b}."),
    _F2("Between the values {a} and {b}, the {w} one is which?"),
    _F2("My two scores are {a} and {b}. Which score is {w}?"),
    _F3("I want the {w} number. Is it {a} or {b}?"),
    _F3("Keep only the {w} of {a} and {b}. What do you keep?"),
    _F3("Pick whichever of {a}, {b} is {w}."),
    _F3("I have {a} and {b} in a spreadsheet. Which cell holds the {w} number?"),
    _F3("Looking at {a} next to {b}, which one comes out {w}?"),
)


def _decimal_pair(rng: random.Random) -> tuple[str, str]:
    whole = rng.randint(0, 99)
    sign = "-" if rng.random() < 0.2 else ""
    while True:
        short = f"{sign}{whole}.{rng.randint(1, 9)}"
        long = f"{sign}{whole}.{rng.randint(1, 99):02d}".rstrip("0")
        if rng.random() < 0.3:
            long = f"{sign}{whole}.{rng.randint(1, 999):03d}".rstrip("0")
        if float(short) != float(long) and not long.endswith("."):
            return (short, long) if rng.random() < 0.5 else (long, short)


def _compare(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    a, b = _decimal_pair(rng)
    want = t.kind or rng.choice(("larger", "smaller"))
    word = rng.choice(_LARGER if want == "larger" else _SMALLER)
    q = t.text.format(a=a, b=b, w=word)
    pick = max if want == "larger" else min
    return q, pick((a, b), key=float), {"want": want, "a": a, "b": b}


# -- strings -------------------------------------------------------------------------------------------
_LENGTH = (
    _T('How many characters are in the string "{s}"?'),
    _T('What is the length of "{s}"?'),
    _T("How long is the string {s}? Count the characters."),
    _T('Count the characters in "{s}".'),
    _T("How many characters does '{s}' have?"),
    _T("Tell me the number of characters in {s}."),
    _T('What is len("{s}") in Python?'),
    _T("My password is {s}. How many characters long is it?"),
    _T('How many characters make up "{s}"?'),
    _T("Give the character count of the string '{s}'."),
    _T("Find the length, in characters, of {s}."),
    _T('The code "{s}" is how many characters long?'),
    _T("How many characters long is {s}?"),
    _T('Length of "{s}" in characters?'),
    _T("What's the number of characters in '{s}'?"),
    _T("How many characters are there in {s}?"),
    _T("What is the length of the string '{s}' in characters?"),
    _T("Count the characters of the word {s}."),
    _T("Tell me how long '{s}' is, in characters."),
    _T("Number of characters in {s}?"),
    _T("How many letters and digits does '{s}' contain in total?"),
    _T("What is the total number of characters in the text {s}?"),
    _T("Find out how many characters '{s}' has."),
    _T("Measure the length of {s}."),
    _T("The label {s} is printed on a box. How many characters long is the label?"),
    # held out
    _H("Count every character of this string: {s}"),
    _H('"{s}" has how many characters?'),
    _H("If I type {s}, how many characters have I typed?"),
    _H("What is the character length of the text '{s}'?"),
    _H("I need the character count for {s}."),
    _H('Please tell me how many characters the string "{s}" contains.'),
    # fresh held-out
    _F("How many characters would you count in {s}?"),
    _F("Give me the size of '{s}' in characters."),
    _F("My username is {s}. What is its length?"),
    _F('Characters in "{s}": how many?'),
    _F("Tell me the character total of {s}."),
    _F2("How many characters is {s} made of?"),
    _F2("If you count them one by one, how many characters are there in {s}?"),
    _F2("Figure out the length of '{s}' in characters."),
    _F2("The ID {s} has how many characters?"),
    _F2("Count up the characters in {s} for me."),
    _F3("What is the character count of {s}?"),
    _F3("I was given the voucher {s}. Its length in characters?"),
    _F3("{s} - how long is it in characters?"),
    _F3("Across {s}, how many characters are there from first to last?"),
    _F3("Please count how many characters make up '{s}'."),
)

_REVERSE = (
    _T('Write the string "{s}" reversed (last character first).'),
    _T('Reverse "{s}".'),
    _T('What is "{s}" spelled backwards?'),
    _T("Spell {s} backwards."),
    _T("Give me the reverse of the string '{s}'."),
    _T("Reverse the characters of {s}."),
    _T('What does "{s}" look like written back to front?'),
    _T("Write {s} in reverse order."),
    _T('Turn "{s}" around so the last character comes first.'),
    _T("What is the string '{s}' reversed?"),
    _T("Flip the string {s} backwards."),
    _T('Print "{s}" reversed.'),
    _T("Reverse the string {s}."),
    _T('What is "{s}" written backwards?'),
    _T("Give {s} backwards, character by character."),
    _T("Reverse the order of the characters in '{s}'."),
    _T("What do you get when you reverse {s}?"),
    _T("Write the characters of {s} in the opposite order."),
    _T("Can you write '{s}' in reverse?"),
    _T("Give me {s} with its characters reversed."),
    _T('What is the reversed form of "{s}"?'),
    _T("Spell the string {s} from end to start."),
    _T("Invert the string {s}."),
    _T("Produce the reverse of {s}."),
    _T("The code {s} was written backwards by mistake. What is it the right way round?"),
    _T("{s} reversed is what?"),
    _T("Spell '{s}' starting from its last letter."),
    _T("Write {s} from its end to its beginning."),
    _T('What is "{s}" when read in the opposite direction?'),
    _T("Turn the word {s} end to end. What do you get?"),
    _T("Reverse {s} and tell me how it reads."),
    _T("In reverse, {s} reads as what?"),
    _T("What do you get by writing '{s}' in the opposite order?"),
    _T("Backward spelling of {s}, please."),
    _T('If "{s}" is read from its final character to its first, what is it?'),
    # held out
    _H("Read {s} from right to left. What do you get?"),
    _H('Take "{s}" and reverse it.'),
    _H("If you write '{s}' backwards, what is the result?"),
    _H("Backwards, {s} is what?"),
    _H("Mirror the text '{s}'. What comes out?"),
    _H('Write "{s}" from the last character to the first.'),
    # fresh held-out
    _F("Show me {s} with the order of its characters flipped."),
    _F("My username is {s}. What is it backwards?"),
    _F("Reverse-spell {s} for me."),
    _F("Start at the last character of '{s}' and write it all the way back to the first. What do you get?"),
    _F("Undo the order of the letters in {s}."),
    _F2("Give me {s}, but starting from its end."),
    _F2("Output {s} last letter first."),
    _F2("Rewrite '{s}' in backward order."),
    _F2("What would {s} look like reversed?"),
    _F2("Please invert the letter order of {s}."),
    _F3("Spell {s} from right to left."),
    _F3("Starting with its final letter, write {s} out completely."),
    _F3("What is {s} written in reverse?"),
    _F3("Turn '{s}' backwards for me."),
    _F3("Read {s} from the end to the beginning and write it out."),
)

_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}
_CHAR = (
    _T('What is the {o} letter of the word "{s}"?'),
    _T("What is the {o} character of {s}?"),
    _T("In the word '{s}', which letter is in position {n}?"),
    _T('Which character comes {o} in "{s}"?'),
    _T("Tell me the {o} letter of {s}."),
    _T('Counting from 1, what is character number {n} of "{s}"?'),
    _T("What letter is at position {n} in the word {s}?"),
    _T("Give the {o} letter in '{s}'."),
    _T('Spell "{s}". What is its {o} letter?'),
    _T("Find the {o} character of the string {s}."),
    _T('Which letter is number {n} in "{s}"?'),
    _T("What is letter {n} of {s}?"),
    _T("What is the {o} letter in {s}?"),
    _T('Which letter is at position {n} of "{s}"?'),
    _T("In {s}, what is the {o} character?"),
    _T("What is the character at position {n} of the string {s}?"),
    _T("Give me letter number {n} of the word '{s}'."),
    _T("Which letter is the {o} one in {s}?"),
    _T("In '{s}', which character is in the {o} position?"),
    _T("Spell {s} and tell me the {o} letter."),
    # held out
    _H("Look at the word {s}. Its {o} letter is what?"),
    _H('In "{s}", what sits at position {n} (the first letter is position 1)?'),
    _H("Name the {o} character of '{s}'."),
    _H("The word is {s}. Which letter is {o}?"),
    _H("Position {n} of the word '{s}' holds which letter?"),
    _H('Tell me which letter of "{s}" is {o}.'),
    # fresh held-out
    _F("Which character sits in spot {n} of {s}?"),
    _F("Counting from the left, what is the {o} letter of '{s}'?"),
    _F("In the word {s}, pick out letter number {n}."),
    _F('Of the letters in "{s}", which one is {o}?'),
    _F("I'm looking for the {o} character in {s}. What is it?"),
    _F2("What letter do you find at place {n} in {s}?"),
    _F2("In {s}, which letter is number {n} from the start?"),
    _F2("Starting from 1, which character of {s} is at index {n}?"),
    _F2("{s}: what is its {o} character?"),
    _F2("Which letter holds the {o} spot in '{s}'?"),
    _F3("What's the {o} character when you spell '{s}'?"),
    _F3("If {s} is written out, letter {n} is which one?"),
    _F3("{s} - give me letter number {n}."),
    _F3("Going left to right through {s}, what is character {n}?"),
    _F3("I need the {o} symbol of the code {s}."),
)


def _string(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(6, 20)))
    if r < 0.75:
        return rng.choice(_WORDS).lower()
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 14)))


def _length(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    s = _string(rng)
    return t.text.format(s=s), str(len(s)), {"text": s}


def _reverse(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    s = _string(rng)
    return t.text.format(s=s), s[::-1], {"text": s}


def _char(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    s = rng.choice(_WORDS).lower()
    n = rng.randint(2, len(s))
    o = _ORDINAL.get(n, f"{n}th")
    return t.text.format(s=s, n=n, o=o), s[n - 1], {"text": s, "n": str(n)}


# -- no tool needed ------------------------------------------------------------------------------------
_CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Spain", "Madrid"), ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"),
             ("Egypt", "Cairo"), ("Greece", "Athens"), ("Canada", "Ottawa"), ("Ireland", "Dublin"))
_OPPOSITES = (("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"), ("fast", "slow"),
              ("open", "closed"), ("happy", "sad"), ("left", "right"), ("old", "new"), ("light", "dark"),
              ("wet", "dry"), ("early", "late"), ("full", "empty"), ("hard", "soft"))
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_COLORS = (("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("a ripe banana", "yellow"),
           ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"))
_ANIMALS = (("a dog", "bark"), ("a cat", "meow"), ("a cow", "moo"), ("a duck", "quack"), ("a sheep", "baa"),
            ("a lion", "roar"), ("a horse", "neigh"))
_DEFS = (("a puppy", "a young dog"), ("a kitten", "a young cat"), ("a triangle", "a shape with three sides"),
         ("a square", "a shape with four equal sides"), ("ice", "frozen water"), ("a week", "seven days"),
         ("a century", "one hundred years"), ("a library", "a place where books are kept and lent"))
_GREETINGS = ("Hello!", "Hi there!", "Good morning!", "Hey, how are you?", "Thanks for your help!",
              "Good night!", "Nice to meet you.")

_PLAIN = (  # (template, kind)
    _T("What is the capital of {c}?", "capital"),
    _T("Name the capital city of {c}.", "capital"),
    _T("What is the opposite of \"{w}\"?", "opposite"),
    _T("Give the opposite of the word {w}.", "opposite"),
    _T("What day comes after {d}?", "day"),
    _T("Which day of the week follows {d}?", "day"),
    _T("What color is {x}?", "color"),
    _T("What sound does {x} make?", "animal"),
    _T("What is {x}?", "define"),
    _T("{g}", "greet"),
    _T("What is {a} + {b}?", "small_sum"),
    _T("What is {a} times {b}?", "small_mul"),
    _T("Tell me the capital of {c}.", "capital"),
    _T("Do you know the capital of {c}?", "capital"),
    _T("What is {c}'s capital city?", "capital"),
    _T("What's the opposite of {w}?", "opposite"),
    _T("Tell me the day after {d}.", "day"),
    _T("Which day comes right after {d}?", "day"),
    _T("Can you explain what {x} is?", "define"),
    _T("Define {x}.", "define"),
    _T("What colour is {x}?", "color"),
    _T("Which noise does {x} make?", "animal"),
    _T("What does {x} say?", "animal"),
    _T("Quick: {a} + {b} = ?", "small_sum"),
    _T("What do you get when you multiply {a} by {b}?", "small_mul"),
    _T("Name the weekday after {d}.", "day"),
    _T("{d} is followed by which day?", "day"),
    _T("What's the next day of the week after {d}?", "day"),
    _T("What day comes before {d}?", "day_before"),
    _T("Which day of the week is just before {d}?", "day_before"),
    _T("{q}", "fact"),
    _T("Quick fact check: {q}", "fact"),
    _T("Capital of {c}?", "capital"),
    _T("Hi! What is the capital of {c}?", "capital"),
    _T("What is the plural of {x}?", "plural"),
    _T("What's the plural form of the word {x}?", "plural"),
    # held out
    _H("Which city is the capital of {c}?", "capital"),
    _H("Tell me what {x} is.", "define"),
    _H("If today is {d}, what day is tomorrow?", "day"),
    _H("What do you call the opposite of {w}?", "opposite"),
    _H("I forgot: what is the capital of {c}?", "capital"),
    _H("Describe {x} in a few words.", "define"),
)


_FACTS = (("How many legs does a spider have?", "8", "A spider has 8 legs."),
          ("How many days are in a week?", "7", "A week has 7 days."),
          ("How many legs does a dog have?", "4", "A dog has 4 legs."),
          ("What is the largest planet in our solar system?", "Jupiter", "Jupiter is the largest planet."),
          ("What do bees make?", "honey", "Bees make honey."),
          ("What is frozen water called?", "ice", "Frozen water is ice."),
          ("How many months are in a year?", "12", "A year has 12 months."),
          ("What planet do we live on?", "Earth", "We live on Earth."),
          ("How many hours are in a day?", "24", "A day has 24 hours."),
          ("Which animal is known as the king of the jungle?", "lion", "The lion is called the king of the jungle."),
          ("What is the color of a clear sky?", "blue", "A clear sky is blue."),
          ("How many sides does a triangle have?", "3", "A triangle has 3 sides."),
          ("Which season comes after winter?", "spring", "Spring comes after winter."),
          ("What gas do people need to breathe?", "oxygen", "People breathe oxygen."),
          ("How many wheels does a bicycle have?", "2", "A bicycle has 2 wheels."),
          ("What is the opposite of north?", "south", "The opposite of north is south."))
_PLURALS = (("cat", "cats"), ("child", "children"), ("mouse", "mice"), ("box", "boxes"), ("foot", "feet"),
            ("city", "cities"), ("tooth", "teeth"), ("leaf", "leaves"), ("person", "people"), ("woman", "women"))


def _plain(rng: random.Random, t: _T) -> tuple[str, str, dict]:
    k = t.kind
    if k == "fact":
        q, a, say = rng.choice(_FACTS)
        return t.text.format(q=q), a, {"kind": k, "say": say}
    if k == "plural":
        w, pl = rng.choice(_PLURALS)
        return t.text.format(x=w), pl, {"kind": k, "say": f"The plural of \"{w}\" is \"{pl}\"."}
    if k == "day_before":
        d = rng.randrange(7)
        prev = _DAYS[(d - 1) % 7]
        return t.text.format(d=_DAYS[d]), prev, {"kind": k, "say": f"The day before {_DAYS[d]} is {prev}."}
    if k == "capital":
        c, cap = rng.choice(_CAPITALS)
        return t.text.format(c=c), cap, {"kind": k, "say": f"The capital of {c} is {cap}."}
    if k == "opposite":
        w, o = rng.choice(_OPPOSITES)
        return t.text.format(w=w), o, {"kind": k, "say": f"The opposite of \"{w}\" is \"{o}\"."}
    if k == "day":
        d = rng.randrange(7)
        nxt = _DAYS[(d + 1) % 7]
        return t.text.format(d=_DAYS[d]), nxt, {"kind": k, "say": f"The day after {_DAYS[d]} is {nxt}."}
    if k == "color":
        x, col = rng.choice(_COLORS)
        return t.text.format(x=x), col, {"kind": k, "say": f"{x[0].upper() + x[1:]} is {col}."}
    if k == "animal":
        x, snd = rng.choice(_ANIMALS)
        return t.text.format(x=x), snd, {"kind": k, "say": f"{x[0].upper() + x[1:]} says \"{snd}\"."}
    if k == "define":
        x, d = rng.choice(_DEFS)
        return t.text.format(x=x), d, {"kind": k, "say": f"{x[0].upper() + x[1:]} is {d}."}
    if k == "greet":
        g = rng.choice(_GREETINGS)
        reply = "You're welcome!" if g.startswith("Thanks") else "Hello! How can I help you today?"
        return t.text.format(g=g), reply, {"kind": k, "say": "I'm doing well, thank you." if "how" in g else ""}
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if k == "small_sum":
        return t.text.format(a=a, b=b), str(a + b), {"kind": k, "say": f"{a} + {b} = {a + b}."}
    return t.text.format(a=a, b=b), str(a * b), {"kind": k, "say": f"{a} times {b} is {a * b}."}


# -- registry ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Family:
    templates: tuple[_T, ...]
    make: Callable[[random.Random, _T], tuple[str, str, dict]]

    def indices(self, split: str) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.templates) if t.split == split)

    def split(self, i: int) -> str:
        return self.templates[i].split


_REGISTRY: dict[str, _Family] = {
    "arith": _Family(_ARITH, _arith),
    "count": _Family(_COUNT, _counting(_word)),
    "count_name": _Family(_COUNT_NAME, _counting(_name)),
    "count_text": _Family(_COUNT_TEXT, _counting(_paragraph)),
    "compare": _Family(_COMPARE, _compare),
    "length": _Family(_LENGTH, _length),
    "reverse": _Family(_REVERSE, _reverse),
    "char": _Family(_CHAR, _char),
    "plain": _Family(_PLAIN, _plain),
}
FAMILIES: dict[str, int] = {name: len(f.templates) for name, f in _REGISTRY.items()}  # family -> templates
HELDOUT: dict[str, tuple[int, ...]] = {name: f.indices("heldout") for name, f in _REGISTRY.items()}
FRESH: dict[str, tuple[int, ...]] = {name: f.indices("fresh") for name, f in _REGISTRY.items()}
FRESH2: dict[str, tuple[int, ...]] = {name: f.indices("fresh2") for name, f in _REGISTRY.items()}
FRESH3: dict[str, tuple[int, ...]] = {name: f.indices("fresh3") for name, f in _REGISTRY.items()}
TOOL_FAMILIES = tuple(f for f in FAMILIES if f != "plain")


def _templates(family: str, phrasing: str) -> list[int]:
    fam = _REGISTRY[family]
    if phrasing == "all":
        return list(range(len(fam.templates)))
    return [i for i in range(len(fam.templates)) if fam.split(i) == phrasing]


def generate(family: str, n: int, seed: int = 0, phrasing: str = "all") -> list[Example]:
    """``n`` examples of ``family`` (see ``FAMILIES``) in ``phrasing`` templates, deterministic by seed."""
    if family not in _REGISTRY:
        raise ConfigError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")
    if phrasing not in PHRASINGS:
        raise ConfigError(f"unknown phrasing split {phrasing!r}; choose from {', '.join(PHRASINGS)}")
    rng = random.Random(f"splice-tasks:{family}:{phrasing}:{seed}")
    fam, pool = _REGISTRY[family], _templates(family, phrasing)
    if not pool:
        raise ConfigError(f"task family {family!r} has no {phrasing!r} templates")
    tag = "" if phrasing == "all" else f"{phrasing}-"
    out = []
    for i in range(n):
        k = rng.choice(pool)
        question, answer, meta = fam.make(rng, fam.templates[k])
        meta = {**meta, "template": str(k), "phrasing": fam.split(k)}
        out.append(Example(id=f"{family}-{tag}{seed}-{i}", question=question, answer=answer, family=family,
                           meta=meta))
    return out


def generate_mix(families: list[str], n: int, seed: int = 0, phrasing: str = "all") -> list[Example]:
    """``n`` examples spread evenly over ``families``, interleaved (so a limit cuts every family)."""
    if not families:
        raise ConfigError("no task family given; e.g. gen:arith,count")
    per = [n // len(families) + (1 if i < n % len(families) else 0) for i in range(len(families))]
    lists = [generate(f, k, seed, phrasing) for f, k in zip(families, per)]
    out: list[Example] = []
    for i in range(max(per, default=0)):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out


def parse_spec(spec: str) -> tuple[list[str], str]:
    """``"arith,count@heldout"`` -> (families, phrasing); ``"all"`` (or empty) means every tool family."""
    fams, _, phrasing = spec.partition("@")
    families = [f for f in fams.split(",") if f]
    if families == ["all"]:
        families = list(TOOL_FAMILIES)
    unknown = [f for f in families if f not in _REGISTRY]
    if unknown:
        raise ConfigError(f"unknown task families {unknown}; choose from {', '.join(FAMILIES)}")
    phrasing = phrasing or "all"
    if phrasing not in PHRASINGS:
        raise ConfigError(f"unknown phrasing split {phrasing!r} in gen:{spec}; choose from {', '.join(PHRASINGS)}")
    return families, phrasing
