"""Reward functions for GRPO: plain functions ``fn(completions, answers, **kw) -> list[float]``.

A completion is the episode text after the prompt (the model's turns with spliced tool results); the
trainer also passes ``trajectories`` (the runtime's ``Trajectory`` objects), ``prompts`` and
``syntax``. Answer rewards (numeric-aware accuracy, exact match, F1) score ``final_answer``: the
model's own final answer, the one ``agent eval`` scores (``Trajectory.answer``: the answer tags in
the model's text, else the text of its last turn when that turn is the model's). Tool output never
counts: an episode whose python call prints the right number but which never answers scores 0.
Without a trajectory only answer tags count. The scoring itself is the evals' (``agent.evals.metrics``),
so a number reported by ``agent eval`` and a reward agree. The functions here add what only training
needs: the shape of an episode (format) and what its tools cost.

``parse_rewards("accuracy:1,format:0.2")`` turns a spec into weighted terms; ``score`` evaluates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError
from agent.evals.metrics import exact_match, is_correct, token_f1
from agent.syntax import extract_answer, get_syntax
from agent.trajectory import Trajectory

__all__ = [
    "REWARDS",
    "RewardFn",
    "RewardTerm",
    "accuracy_reward",
    "exact_match_reward",
    "f1_reward",
    "final_answer",
    "format_reward",
    "is_void",
    "parse_rewards",
    "score",
    "tool_bonus_reward",
    "tool_cost_reward",
]

RewardFn = Callable[..., list[float]]


def _trajectories(completions: Sequence[Any], kw: dict[str, Any]) -> list[Trajectory | None]:
    trajs = kw.get("trajectories")
    if trajs is not None:
        if len(trajs) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(trajs)} trajectories")
        return list(trajs)
    return [c if isinstance(c, Trajectory) else None for c in completions]


def _model_text(completion: Any, traj: Trajectory | None) -> str:
    """Only what the model wrote: spliced tool output must not count as the model's answer tags."""
    if traj is not None:
        return "".join(s.text for s in traj.segments if s.source == "model")
    return completion.text if isinstance(completion, Trajectory) else str(completion)


def final_answer(completion: Any, traj: Trajectory | None, syntax: str = "splice") -> str | None:
    """The model's own final answer (see the module docstring); None when it never answered."""
    if traj is not None and traj.answer is not None:
        return traj.answer  # set by the runtime from the model's text only
    return extract_answer(_model_text(completion, traj), get_syntax(syntax))


def _answer_reward(judge: Callable[[str | None, Any], float], completions: Sequence[Any],
                   answers: Sequence[Any], syntax: str, kw: dict[str, Any]) -> list[float]:
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    trajs = _trajectories(completions, kw)
    return [float(judge(final_answer(c, t, syntax), a)) for c, t, a in zip(completions, trajs, answers)]


def accuracy_reward(completions: Sequence[Any], answers: Sequence[Any], syntax: str = "splice",
                    **kw: Any) -> list[float]:
    """1.0 where the model's final answer is correct (numeric- and alias-aware, as evals), else 0.0."""
    return _answer_reward(is_correct, completions, answers, syntax, kw)


def exact_match_reward(completions: Sequence[Any], answers: Sequence[Any], syntax: str = "splice",
                       **kw: Any) -> list[float]:
    """SQuAD exact match of the model's final answer, best over aliases."""
    return _answer_reward(exact_match, completions, answers, syntax, kw)


def f1_reward(completions: Sequence[Any], answers: Sequence[Any], syntax: str = "splice",
              **kw: Any) -> list[float]:
    """Token F1 of the model's final answer against the best alias."""
    return _answer_reward(token_f1, completions, answers, syntax, kw)


def format_reward(completions: Sequence[Any], answers: Sequence[Any], syntax: str = "splice",
                  **kw: Any) -> list[float]:
    """1.0 for a well-formed episode: every tool call parsed (none malformed) and exactly one final
    answer, closed, written by the model; else 0.0."""
    s = get_syntax(syntax)
    out = []
    for c, traj in zip(completions, _trajectories(completions, kw)):
        text = _model_text(c, traj)
        one_answer = text.count(s.answer_open) == 1 and text.count(s.answer_close) == 1 \
            and text.index(s.answer_open) < text.index(s.answer_close)
        clean = traj is None or traj.malformed_calls == 0
        out.append(float(one_answer and clean))
    return out


def tool_bonus_reward(completions: Sequence[Any], answers: Sequence[Any], **kw: Any) -> list[float]:
    """1.0 where the episode made at least one tool call that ran without error (needs trajectories)."""
    return [float(t is not None and any(not c.error for c in t.tool_calls))
            for t in _trajectories(completions, kw)]


def tool_cost_reward(completions: Sequence[Any], answers: Sequence[Any], **kw: Any) -> list[float]:
    """Minus the number of tool calls (malformed ones included): weight it to charge per call."""
    return [-float(len(t.tool_calls)) if t is not None else 0.0 for t in _trajectories(completions, kw)]


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "exact": exact_match_reward,
    "f1": f1_reward,
    "format": format_reward,
    "tool_bonus": tool_bonus_reward,
    "tool_cost": tool_cost_reward,
}


def is_void(traj: Trajectory) -> bool:
    """An episode to leave out of the loss: a malformed call, an empty model turn, or one that was cut
    off by the context limit or cancelled."""
    if traj.malformed_calls or traj.stop_reason in ("context", "cancelled"):
        return True
    return any(s.source == "model" and not s.text.strip() for s in traj.segments)


@dataclass(frozen=True)
class RewardTerm:
    name: str
    fn: RewardFn
    weight: float


def parse_rewards(spec: str, extra: dict[str, RewardFn] | None = None) -> list[RewardTerm]:
    """``"accuracy:1,format:0.2"`` -> terms. A name without weight gets 1. ``extra`` adds functions
    (a reward model) under their own names."""
    table = {**REWARDS, **(extra or {})}
    terms = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, w = part.partition(":")
        if name not in table:
            raise ConfigError(f"unknown reward {name!r} in {spec!r}; choose from {', '.join(sorted(table))}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"reward weight {w!r} for {name} is not a number (write name:weight)") from None
        terms.append(RewardTerm(name, table[name], weight))
    if not terms:
        raise ConfigError("no reward terms: give e.g. --rewards accuracy:1,format:0.2")
    return terms


def score(terms: Sequence[RewardTerm], completions: Sequence[Any], answers: Sequence[Any],
          **kw: Any) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted total per completion and each term's raw values (for metrics)."""
    parts = {t.name: [float(x) for x in t.fn(completions, answers, **kw)] for t in terms}
    for name, values in parts.items():
        if len(values) != len(completions):
            raise ValueError(f"reward {name} returned {len(values)} values for {len(completions)} completions")
    total = [sum(t.weight * parts[t.name][i] for t in terms) for i in range(len(completions))]
    return total, parts
