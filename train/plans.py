"""Plans: a training example before its tool calls have run, written in parts (see ``train.render``).

``text``/``call``/``answer`` build the parts; ``train.data`` executes plans with the real tools and
``train.identity`` / ``train.probe`` build their own. This module imports nothing of the project, so
every family can use it without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Plan", "text", "call", "answer"]


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def call(tool: str, arg: str, *, fails: bool = False) -> dict[str, Any]:
    """A tool call; ``fails``: the plan expects this call to come back as an error (a recovery
    example), and the example is dropped if it does not."""
    return {"type": "call", "tool": tool, "arg": arg, **({"fails": True} if fails else {})}


def answer(s: str) -> dict[str, Any]:
    return {"type": "answer", "text": s}


@dataclass
class Plan:
    """An example before its calls have run. ``check(results)`` keeps it only if the real results
    support the gold answer. ``tools`` are the tools the system prompt offers."""

    id: str
    family: str
    question: str
    parts: list[dict[str, Any]]
    gold: str
    check: Callable[[list[str]], bool] | None = None
    tools: tuple[str, ...] = ("python", "search")
    identity: str = ""  # the identity line the system prompt starts with (``RuntimeConfig.system``)
