"""Identity examples: the assistant's name and maker, answered directly (no tool)."""

from __future__ import annotations

import random

from train.data import Plan, answer, text

__all__ = ["identity_plans"]

_QUESTIONS = ("What is your name?", "Who are you?", "Who made you?", "Who created you?",
              "What should I call you?", "Introduce yourself.", "Which company built you?",
              "Are you ChatGPT?", "What model are you?", "Tell me about yourself.")


def identity_plans(n: int, name: str, maker: str, seed: int = 0) -> list[Plan]:
    rng = random.Random(f"identity:{seed}")
    by = f", made by {maker}" if maker else ""
    out = []
    for i in range(n):
        q = _QUESTIONS[i % len(_QUESTIONS)] if i < len(_QUESTIONS) else rng.choice(_QUESTIONS)
        reply = f"I am {name}{by}. I can use tools such as Python and search when they help."
        out.append(Plan(f"identity-{seed}-{i}", "identity", q, [text(reply + "\n"), answer(f"I am {name}{by}.")],
                        name, tools=("python", "search")))
    return out
