"""Training-only arithmetic word problems composed from a scene and a frame.

The eval's arithmetic family has about nine training templates per expression kind; a 135M model
trained on them learns those sentences, and a held-out word problem that words the same operation
another way ("in each of 12 beds", "jugs of 458 litres") gets the operation of whichever template
it looks like. Here a *frame* says how an operation is worded, with the roles of its numbers
(``{a}``, ``{b}``, ``{c}``, ``{p}`` as in ``agent.evals.tasks``) in many orders and with many cue
words, and a *scene* fills in who and what (a bakery, loaves and buns, trays, days): the same
operation in many more surroundings than the templates give. Numbers are drawn by
``agent.evals.tasks.arith_question``, as the family's own templates draw them.

Held-out phrasings stay unseen: no frame in any scene is within a 0.8 difflib ratio of a held-out
arithmetic template (``tests/test_train_data.py`` checks every combination).
"""

from __future__ import annotations

import random

from agent.evals.data import Example
from agent.evals.tasks import ARITH_KINDS, arith_question

__all__ = ["FRAMES", "MORE_FRAMES", "SCENES", "compose", "generate"]

# who, what it does (3rd person), two kinds of item (plural), a container (singular, plural), a
# period (singular, plural)
SCENES = (
    ("a bakery", "bakes", "loaves", "buns", "tray", "trays", "day", "days"),
    ("a factory", "makes", "bolts", "screws", "crate", "crates", "shift", "shifts"),
    ("a farm", "collects", "eggs", "apples", "basket", "baskets", "week", "weeks"),
    ("a bookshop", "sells", "novels", "comics", "shelf", "shelves", "month", "months"),
    ("a school", "orders", "pens", "rulers", "box", "boxes", "term", "terms"),
    ("a brewery", "fills", "bottles", "cans", "pallet", "pallets", "day", "days"),
    ("a florist", "sells", "roses", "lilies", "bucket", "buckets", "week", "weeks"),
    ("a toy shop", "sells", "puzzles", "kites", "carton", "cartons", "month", "months"),
    ("a print shop", "prints", "posters", "flyers", "stack", "stacks", "hour", "hours"),
    ("a dairy", "ships", "jugs", "tubs", "truck", "trucks", "morning", "mornings"),
    ("a cafe", "serves", "coffees", "teas", "table", "tables", "day", "days"),
    ("a clinic", "uses", "masks", "gloves", "pack", "packs", "week", "weeks"),
    ("a post office", "handles", "letters", "parcels", "sack", "sacks", "day", "days"),
    ("a garden centre", "sells", "seeds", "bulbs", "tray", "trays", "season", "seasons"),
    ("a hotel", "washes", "towels", "sheets", "cart", "carts", "night", "nights"),
    ("a mine", "digs up", "rocks", "crystals", "wagon", "wagons", "shift", "shifts"),
)

# kind -> frames; slots: {who} {verb} {x} {y} {box} {boxes} {per} {pers} and the numbers
FRAMES: dict[str, tuple[str, ...]] = {
    "mul": (
        "{who} {verb} {a} {x} every {per}. How many {x} is that over {b} {pers}?",
        "In {b} {pers}, how many {x} does {who} get through at {a} a {per}?",
        "Every one of {b} {boxes} contains {a} {x}. Total number of {x}?",
        "{b} {boxes}, {a} {x} in each: how many {x}?",
        "There are {a} {x} in a {box}. Find the number of {x} in {b} {boxes}.",
        "{who} fills {b} {boxes} with {a} {x} apiece. How many {x} does that take?",
        "At {a} {x} per {per}, how many {x} does {who} handle in {b} {pers}?",
        "{b} times {a} comes to how much?",
        "{who} needs {b} {boxes}, and every {box} takes {a} {x}. How many {x} does it need?",
        "One {box} costs {a} dollars. What is the bill for {b} {boxes}?",
    ),
    "add": (
        "{who} {verb} {a} {x} in the first {per} and {b} in the second. How many {x} is that for both {pers}?",
        "Last {per} there were {a} {x}; this {per} there are {b}. What is the two-{per} total?",
        "One {box} holds {a} {x} and another holds {b}. How many {x} do the two {boxes} hold together?",
        "{a} plus {b} makes what?",
        "{who} had {a} {x} and got {b} more. How many {x} does it have now?",
        "Sum up {a} and {b}.",
        "If I add {b} to {a}, what do I get?",
        "There are {a} {x} and {b} {y}. How many {x} and {y} are there together?",
        "Increase {a} by {b}. What is the new number?",
        "{who} counted {a} {x} upstairs and {b} downstairs. What is the count for the whole building?",
    ),
    "sub": (
        "{who} had {a} {x} and used {b} of them. How many {x} are left?",
        "Out of {a} {x}, {b} were sold. How many were not sold?",
        "{a} {x} minus {b} {x} leaves how many {x}?",
        "A stock of {a} {x} drops by {b}. What is the stock now?",
        "How many more is {a} than {b}?",
        "{b} of the {a} {x} were damaged. How many {x} were fine?",
        "Reduce {a} by {b}.",
        "The target is {a} {x} and {who} has {b} so far. How many {x} are still missing?",
        "From {a}, subtract {b}.",
        "{who} must deliver {a} {x}; {b} are already out. How many {x} still have to go?",
    ),
    "mul_sub": (
        "{who} {verb} {b} {x} a {per} for {a} {pers} and then loses {c} of them. How many {x} remain?",
        "There are {a} {boxes} of {b} {x} each; {c} {x} are removed. How many {x} stay?",
        "{c} {x} are taken out of {a} {boxes} holding {b} {x} apiece. How many {x} are still in the {boxes}?",
        "Multiply {a} by {b} and take {c} off the result.",
        "After {c} are given away, how many {x} are left from {a} {boxes} of {b}?",
        "{a} rows of {b} {x}, less {c} {x}: how many {x}?",
        "Each of {a} {boxes} holds {b} {x}. If {c} {x} are sold, how many are still there?",
        "{who} stacks {b} {x} on each of {a} {boxes}, then {c} {x} fall off. What is the count now?",
        "What is {a} times {b} with {c} subtracted?",
        "Over {a} {pers} {who} {verb} {b} {x} per {per}, and {c} {x} are returned. How many {x} are kept?",
    ),
    "add_mul": (
        "Every {per}, {who} {verb} {a} {x} and {b} {y}. How many {x} and {y} is that over {c} {pers}?",
        "For {c} {pers} in a row, {who} {verb} {a} {x} and {b} {y} each {per}. How many items is that?",
        "There are {c} {boxes}, and each holds {a} {x} plus {b} {y}. How many items are in the {boxes}?",
        "{a} {x} and {b} {y} go into one {box}. How many items go into {c} {boxes}?",
        "Sum {a} and {b}, and multiply that by {c}.",
        "What is {c} times the sum of {a} and {b}?",
        "{who} {verb} {a} {x} in the morning and {b} in the evening, for {c} dollars apiece. What is the "
        "day's takings in dollars?",
        "{a} {x} plus {b} {y} per {per}, for {c} {pers}: what is the total?",
        "{c} {boxes} are loaded the same way: {a} {x} and {b} {y} in every one. How many items are loaded?",
        "{who} needs {a} {x} and {b} {y} per {box}, and it has {c} {boxes} to do. How many items does it "
        "need?",
    ),
    "floordiv": (
        "{a} {x} are packed {b} to a {box}. How many full {boxes} are there?",
        "From {a} {x}, how many {boxes} holding {b} each can be filled?",
        "{who} has {a} {x} and puts {b} in every {box}. How many {boxes} are completely full?",
        "If {a} {x} are split into groups of {b}, how many whole groups are there?",
        "What is the integer quotient of {a} and {b}?",
        "Each {box} takes exactly {b} {x}. With {a} {x}, how many {boxes} can {who} fill?",
        "How many times does {b} go into {a} completely?",
        "{a} {x} are spread evenly over {b} {boxes}. How many whole {x} does each {box} get?",
        "With {a} {x} and {b} {x} needed per {box}, how many complete {boxes} can {who} make?",
        "Floor-divide {a} by {b}.",
    ),
    "percent": (
        "{p}% of the {a} {x} at {who} are sold. How many {x} is that?",
        "What is {p} percent of {a} {x}?",
        "Of {a} {x}, {p}% are new. How many {x} are new?",
        "A bill of {a} dollars gets a {p}% tip. How many dollars is the tip?",
        "{a} dollars is cut by {p}%. How many dollars come off?",
        "Take {p}% of {a}.",
        "{who} wants {p}% of its {a} {x} checked. How many {x} get checked?",
        "How many is {p}% of {a}?",
        "A loan of {a} dollars charges {p}% interest once. How much interest is that in dollars?",
        "{who} has {a} {x}, and {p}% of them go to a fair. How many {x} go?",
    ),
}
assert set(FRAMES) == set(ARITH_KINDS)

# More frames (``generate(..., more=True)``; recipe v13): the operation named by a cue word other than
# the frames' ("tally", "combined", "exceed", "crews of"), bare two-number requests, and people who
# each do the same thing ("{a} helpers each ...") before a second step; none near a held-out template
MORE_FRAMES: dict[str, tuple[str, ...]] = {
    "mul": (
        "{a} helpers each carry {b} {x} for {who}. How many {x} do they carry between them?",
        "Work out {a} multiplied by {b}.",
        "{b} {boxes}, every one with {a} {x} inside: find the total number of {x}.",
        "Give the product for these two numbers: {a} and {b}.",
        "Each of {a} helpers brings {b} {x} to {who}. How many {x} arrive?",
        "{who} pays {a} dollars per {box} for {b} {boxes}. How many dollars does it pay?",
        "A {box} weighs {a} grams. In grams, how heavy are {b} of them together?",
        "{a} lots of {b}: how much is that?",
    ),
    "add": (
        "Give the combined total of {a} and {b}.",
        "Keep a running tally: {a} {x} came in, then {b} more. What does the tally read?",
        "{a} and {b}: what do they come to altogether?",
        "Work out the grand total of {a} {x} and {b} {y}.",
        "What is {a} combined with {b}?",
        "{who} received {a} {x} on one {per} and {b} on the next. How many {x} came in all?",
        "Put {a} and {b} together. What is the total?",
        "{a} {x} and {b} {y} sit in the store room of {who}. Count them all: how many items?",
    ),
    "sub": (
        "By how much does {a} exceed {b}?",
        "{who} started with {a} {x}; {b} were thrown out. How many {x} are kept?",
        "How far is {b} short of {a}?",
        "{a} {x}, with {b} of them taken out, leaves how many?",
        "The gap between {a} and {b} is what?",
        "{who} owes {a} dollars and has paid back {b}. How many dollars are still owed?",
        "Of the {a} {x} ordered, {b} have come. How many {x} are yet to come?",
        "Lower {a} by {b}. What do you get?",
    ),
    "mul_sub": (
        "{a} helpers each bring {b} {x} to {who}, but {c} {x} turn out broken and are binned. How many good "
        "{x} are left?",
        "{who} ships {a} {boxes} of {b} {x}; {c} {x} come back. How many {x} stay sold?",
        "Start with {a} lots of {b}, then remove {c}. What is left?",
        "{a} helpers pick {b} {x} apiece, and {c} {x} are given away. How many {x} are kept?",
        "Each of {a} {pers} {who} {verb} {b} {x}, and it throws away {c} of them in the end. How many {x} "
        "does it keep?",
        "{b} {x} in each of {a} {boxes}, minus the {c} that spoiled: how many {x} are good?",
        "Multiply {a} and {b}, then lower the result by {c}.",
        "{who} buys {a} {boxes} holding {b} {x} each and hands out {c} {x}. How many {x} does it still have?",
    ),
    "add_mul": (
        "{who} {verb} {a} {x} on one {per} and {b} on the next, and each one earns {c} dollars. How many "
        "dollars is that?",
        "Add {a} and {b}, then multiply by {c}.",
        "{c} helpers each bring {a} {x} and {b} {y}. How many items arrive?",
        "Each {box} gets {a} {x} and {b} {y}, and there are {c} {boxes}. How many items in total?",
        "{a} {x} in the morning, {b} in the afternoon, every {per} for {c} {pers}: how many {x}?",
        "Take the sum of {a} and {b} and multiply it by {c}.",
        "{who} has {a} {x} and {b} {y} per {box}, with {c} {boxes}. How many items is that?",
        "At {c} dollars apiece, what do {a} {x} and {b} {y} cost together?",
    ),
    "floordiv": (
        "How many whole groups of {b} fit into {a}?",
        "{a} helpers are put into crews of {b}. How many full crews are there?",
        "Divide {a} by {b}, dropping the remainder.",
        "{a} {x} go into {boxes} of {b}. Ignoring leftovers, how many {boxes} are filled?",
        "{who} shares {a} {x} evenly among {b} helpers. How many whole {x} does each helper get?",
        "With {a} dollars and {x} at {b} dollars each, how many {x} can {who} buy?",
        "How many full {boxes} of {b} can be packed from {a} {x}?",
        "{a} divided by {b}, rounded down, is what?",
    ),
    "percent": (
        "Work out {p}% of {a} {x}.",
        "If {p} in every hundred of {a} {x} are faulty, how many {x} are faulty?",
        "{who} had {a} {x} and now has {p}% more. How many extra {x} is that?",
        "A price of {a} dollars goes up by {p}%. By how many dollars does it rise?",
        "{p} percent of the {a} {x} at {who} are new. Count the new ones.",
        "Find {p}% of {a}.",
        "{who} gives {p}% of its {a} {x} to charity. How many {x} is that?",
        "Of {a} people asked, {p}% said yes. How many said yes?",
    ),
}
assert set(MORE_FRAMES) == set(ARITH_KINDS)


def compose(frame: str, scene: tuple[str, ...]) -> str:
    """``frame`` with ``scene`` filled in and the number slots left, first letter upper-case."""
    who, verb, x, y, box, boxes, per, pers = scene
    s = frame.format(who=who, verb=verb, x=x, y=y, box=box, boxes=boxes, per=per, pers=pers,
                     a="{a}", b="{b}", c="{c}", p="{p}")
    return s[0].upper() + s[1:]


def generate(n: int, seed: int = 0, more: bool = False) -> list[Example]:
    """``n`` composed arithmetic examples (family ``arith``, meta as the family's own), expression
    kinds in turn, frame and scene drawn at random (from ``FRAMES`` and, with ``more``, ``MORE_FRAMES``);
    deterministic by seed."""
    rng = random.Random(f"splice-scenes:{seed}")
    out = []
    for i in range(n):
        kind = ARITH_KINDS[i % len(ARITH_KINDS)]
        frames = FRAMES[kind] + (MORE_FRAMES[kind] if more else ())
        k = rng.randrange(len(frames))
        question, answer, meta = arith_question(rng, compose(frames[k], rng.choice(SCENES)), kind)
        out.append(Example(id=f"arith-scene-{seed}-{i}", question=question, answer=answer, family="arith",
                           meta={**meta, "template": f"scene-{kind}-{k}", "phrasing": "scene"}))
    return out
