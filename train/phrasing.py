"""Training-only variation of generated questions: the same task in other surroundings.

A small model trained on a few dozen question templates learns the templates: a question worded
another way gets the wrong program, or none. ``vary(rng, question, subject)`` rewrites a training
question the ways people do without changing what it asks: a lead-in sentence before it, a closing
remark after it, the subject text quoted another way (``"x"``, ``'x'``, curly quotes, backticks,
bare), the subject put first with the question referring to it (``strawberry: how many r's are in
it?``), a lower-case first letter, no question mark. The subject itself (the word to count in, the
string to reverse) is never touched, so the gold answer stays right.

Held-out phrasings stay unseen: none of the pieces below occurs in a held-out template
(``tests/test_train_data.py`` checks every piece against every ``_H`` template of
``agent.evals.tasks``), and the question without its pieces is a training template's.
"""

from __future__ import annotations

import random
import re

__all__ = ["COMMA_LEADS", "FRONT_SEPARATORS", "LEADS", "TAILS", "QUOTES", "vary"]

LEADS = (
    "Hi! ", "Hello. ", "Hey, ", "Please help me with this. ", "I have a small puzzle. ",
    "Here is a task for you. ", "For my homework: ", "My friend asked me this. ", "Can you help? ",
    "I was wondering about something. ", "Question for you: ", "OK, next one. ", "Let's check something. ",
    "This came up at work. ", "Settle a bet for us. ", "Be careful with this one. ", "A puzzle: ",
    "Good morning! ", "I'm preparing a quiz. ", "One more thing. ", "Help me out here. ",
    "We were arguing about this. ", "Try this: ", "Serious question. ", "For a game we play: ",
)
TAILS = (
    " Thanks!", " Thank you.", " Please be exact.", " I need the exact answer.", " Answer briefly.",
    " Just give me the answer.", " Double-check it.", " It's for a quiz.", " No rush.", " Thanks a lot.",
    " I want to be sure.", " Precision matters here.", " Cheers.", " Be precise, please.",
    " My guess was wrong last time.", " Appreciate it!",
)
# lead-ins that end in a comma, the question going on in lower case ("Quickly, reverse ..."): a first word
# and a comma before the subject that are not the subject (``vary(..., comma=True)``; recipe v13)
COMMA_LEADS = (
    "Quickly, ", "Honestly, ", "Out of curiosity, ", "So, ", "Alright, ", "Okay, ", "Also, ", "Well, ",
    "Seriously, ", "Just wondering, ", "By the way, ", "First of all, ", "Once more, ", "Carefully, ",
    "Tomorrow's quiz, question one, ", "Simply put, ",
)
QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "`"), ("", ""))
FRONT_SEPARATORS = (": ", " - ", "\n", " -- ", " | ", ". ")


def _requote(rng: random.Random, q: str, subject: str) -> str:
    """``q`` with the first quoted (or bare) occurrence of ``subject`` quoted another way; a subject
    with spaces keeps some quotes, so where it starts and ends stays clear."""
    if not subject or subject not in q:
        return q
    choices = QUOTES if " " not in subject and "\n" not in subject else QUOTES[:4]
    for o, c in QUOTES[:2]:
        if f"{o}{subject}{c}" in q:
            no, nc = rng.choice(choices)
            return q.replace(f"{o}{subject}{c}", f"{no}{subject}{nc}", 1)
    if " " in subject or "\n" in subject:
        return q
    i = q.index(subject)  # bare: quote it, if it stands alone as a word
    before, after = q[i - 1: i], q[i + len(subject): i + len(subject) + 1]
    if (before and before.isalnum()) or (after and after.isalnum()):
        return q
    no, nc = rng.choice(QUOTES[:4])
    return q[:i] + no + subject + nc + q[i + len(subject):]


def _front(rng: random.Random, q: str, subject: str) -> str:
    """``q`` with its one-word subject put first and referred to as "it" where it stood
    ("Reverse the word 'abc'." -> "abc: Reverse it."); unchanged if that cannot be done cleanly."""
    if not subject or any(c.isspace() for c in subject) or q.startswith(subject):
        return q
    quotes = "|".join(re.escape(o) for o, _ in QUOTES[:4])
    closing = "|".join(re.escape(c) for _, c in QUOTES[:4])
    m = re.search(rf"(?:\bthe (?:word|name|string|text|term|code) )?(?:{quotes})?(?<![\w-]){re.escape(subject)}"
                  rf"(?![\w-])(?:{closing})?", q)
    if m is None or q.count(subject) != 1 or re.search(r"\b(?:is|was|code|password|username)\W*$", q[:m.start()]):
        return q  # "My password is it" is not how anyone writes
    o, c = rng.choice(QUOTES)
    return f"{o}{subject}{c}{rng.choice(FRONT_SEPARATORS)}{q[:m.start()]}it{q[m.end():]}"


def vary(rng: random.Random, question: str, subject: str = "", p: float = 0.6, *, front: bool = False,
         comma: bool = False) -> str:
    """With probability ``p``, ``question`` reworded by one to three of the variations above
    (putting the subject first only with ``front``; lead-ins from ``COMMA_LEADS`` too with ``comma``);
    ``subject`` (the text the answer is computed from) is kept character for character."""
    if rng.random() >= p:
        return question
    q = question
    pool = ("lead", "tail", "quote", "case", "mark") + (("front",) if front and subject else ())
    ops = rng.sample(pool, rng.randint(1, 3))
    fronted = _front(rng, q, subject) if "front" in ops else q
    if fronted != q:
        q = fronted
    elif "quote" in ops or "front" in ops:  # a subject that cannot go first is quoted another way
        q = _requote(rng, q, subject)
    starts_with_subject = bool(subject) and q.startswith(subject)
    if "case" in ops and q[:1].isupper() and not starts_with_subject:
        q = q[0].lower() + q[1:]
    if "mark" in ops and q.endswith("?"):
        q = q[:-1]
    if "lead" in ops:
        lead = rng.choice(LEADS + COMMA_LEADS if comma else LEADS)
        if lead in COMMA_LEADS and q[:1].isupper() and not starts_with_subject and q[1:2].islower():
            q = q[0].lower() + q[1:]
        q = lead + q
    if "tail" in ops and not (subject and q.rstrip(".!?'\"”`").endswith(subject)):
        q = q.rstrip() + ("" if q.rstrip()[-1:] in ".?!:" else ".") + rng.choice(TAILS)
    return q
