"""Identity examples: the assistant's name and maker, answered directly (no tool).

With a fixed ``name`` every example answers with it (a model that *is* NAME). Without one, each
example draws a name and maker, states them in the system prompt's identity line (what
``RuntimeConfig.system`` / ``--system`` puts there) and answers with them: the model learns to
answer as configured rather than one name.
"""

from __future__ import annotations

import random

from train.plans import Plan, answer, text

__all__ = ["identity_plans", "identity_line"]

_QUESTIONS = ("What is your name?", "Who are you?", "Who made you?", "Who created you?",
              "What should I call you?", "Introduce yourself.", "Which company built you?",
              "Are you ChatGPT?", "What model are you?", "Tell me about yourself.")
_NAMES = ("Nova", "Atlas", "Pip", "Juniper", "Orion", "Sage", "Echo", "Milo", "Iris", "Quill", "Tessa",
          "Bolt", "Lumen", "Kestrel", "Marlowe", "Ada", "Rook", "Willow", "Cobalt", "Fennel")
_MAKERS = ("Acme Labs", "Northwind Research", "the Blue Harbor team", "Tinker & Co", "OpenField",
           "Greenleaf AI", "the Lighthouse project", "Marigold Systems", "Riverstone", "Paper Crane Labs")


def identity_line(name: str, maker: str) -> str:
    return f"You are {name}, an assistant made by {maker}." if maker else f"You are {name}, an assistant."


def identity_plans(n: int, name: str = "", maker: str = "", seed: int = 0) -> list[Plan]:
    rng = random.Random(f"identity:{seed}")
    out = []
    for i in range(n):
        q = _QUESTIONS[i % len(_QUESTIONS)] if i < len(_QUESTIONS) else rng.choice(_QUESTIONS)
        who, by = (name, maker) if name else (rng.choice(_NAMES), rng.choice(_MAKERS))
        made = f", made by {by}" if by else ""
        reply = f"I am {who}{made}. I can use tools such as Python and search when they help."
        out.append(Plan(f"identity-{seed}-{i}", "identity", q, [text(reply + "\n"), answer(f"I am {who}{made}.")],
                        who, tools=("python", "search"), identity="" if name else identity_line(who, by)))
    return out
