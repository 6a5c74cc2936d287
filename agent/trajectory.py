"""A Trajectory records an episode as segments of tokens with their source.

Sources: ``prompt`` (chat template, system prompt, question; mask 0), ``forced`` (a teacher-forced
start of the answer; mask 0), ``model`` (sampled; mask 1,
tool-call text included), ``result`` (spliced tool output and its tags; mask 0). The loss mask that
SFT and GRPO train on is derived from the sources here and nowhere else.

A ``model`` segment keeps the log-prob of each of its tokens as the backend sampled it
(``Segment.logprobs``: the model's unscaled distribution, NaN where the backend cannot say; empty in
records written before they were kept). ``sampled_logprobs()`` lines them up with ``completion_ids``.
``meta["retokenized"]`` counts sampled tokens whose ids a server did not report, so they were
re-encoded from its text (``token_exact`` is False then): such ids may differ from the sampled ones.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Segment", "ToolCall", "Trajectory", "MASKED_SOURCES", "scrub_surrogates", "describe_error"]

MASKED_SOURCES = frozenset({"prompt", "forced", "result"})
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (unencodable as UTF-8) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for any exception, even one whose ``__str__`` raises; UTF-8 safe."""
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not hide the original failure
        msg = "<unprintable message>"
    return scrub_surrogates(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


@dataclass
class Segment:
    source: str  # "prompt" | "model" | "result"
    text: str
    token_ids: list[int]
    t_start: float = 0.0
    t_end: float = 0.0
    logprobs: list[float] = field(default_factory=list)  # model segments: one per token (NaN: unknown)

    @property
    def mask(self) -> int:
        return 0 if self.source in MASKED_SOURCES else 1

    def token_logprobs(self) -> list[float]:
        """One log-prob per token: the recorded ones, NaN where none was recorded."""
        if len(self.logprobs) == len(self.token_ids):
            return list(self.logprobs)
        return [math.nan] * len(self.token_ids)


@dataclass
class ToolCall:
    tool: str
    arg: str
    result: str
    error: bool = False
    malformed: str | None = None  # the MalformedEvent kind, when the call could not run
    duration_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    question: str
    segments: list[Segment] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    stop_reason: str = ""  # answer | eos | max_new_tokens | max_tool_calls | context | cancelled | error
    model: str = ""
    syntax: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    t_start: float = 0.0
    t_end: float = 0.0

    @classmethod
    def failed(cls, question: str, exc: BaseException, **meta: Any) -> "Trajectory":
        """The record of an episode that raised instead of finishing: ``stop_reason="error"`` and the
        error text in ``meta["error"]``, so a batch keeps one result per question."""
        return cls(question=question, stop_reason="error", meta={**meta, "error": describe_error(exc)})

    # -- views ------------------------------------------------------------------------------
    @property
    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    def loss_mask(self) -> list[int]:
        """One entry per token of ``token_ids``: 1 where the model sampled it, else 0."""
        return [s.mask for s in self.segments for _ in s.token_ids]

    @property
    def prompt_len(self) -> int:
        n = 0
        for s in self.segments:
            if s.source != "prompt":
                break
            n += len(s.token_ids)
        return n

    @property
    def text(self) -> str:
        """Everything after the prompt: the model's text with spliced results."""
        return "".join(s.text for s in self.segments if s.source != "prompt")

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def completion_mask(self) -> list[int]:
        return self.loss_mask()[self.prompt_len:]

    def sampled_logprobs(self, fill: float = math.nan) -> list[float]:
        """One entry per token of ``completion_ids``: the sampled log-prob of a model token (NaN
        where its backend could not say), ``fill`` for the masked ones (forced text, tool results)."""
        out = [lp for s in self.segments for lp in (s.token_logprobs() if s.mask else [fill] * len(s.token_ids))]
        return out[self.prompt_len:]

    @property
    def token_exact(self) -> bool:
        """False when some sampled ids were re-encoded from a server's text (see the module docstring)."""
        return not self.meta.get("retokenized")

    @property
    def n_generated(self) -> int:
        return sum(len(s.token_ids) for s in self.segments if s.source == "model")

    @property
    def seconds(self) -> float:
        return max(0.0, self.t_end - self.t_start)

    @property
    def malformed_calls(self) -> int:
        return sum(1 for c in self.tool_calls if c.malformed)

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for seg in d["segments"]:  # NaN is not JSON: unknown log-probs are written as null
            seg["logprobs"] = [None if math.isnan(x) else x for x in seg["logprobs"]]
        d["n_generated"] = self.n_generated
        d["seconds"] = self.seconds
        return d

    def to_json(self) -> str:
        """One JSON line, always UTF-8 encodable (lone surrogates become U+FFFD)."""
        return scrub_surrogates(json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = {k: v for k, v in d.items() if k not in ("n_generated", "seconds")}
        d["segments"] = [Segment(**{**s, "logprobs": [math.nan if x is None else float(x)
                                                           for x in s.get("logprobs") or []]})
                         for s in d.get("segments", [])]
        d["tool_calls"] = [ToolCall(**c) for c in d.get("tool_calls", [])]
        return cls(**d)

    @classmethod
    def from_json(cls, line: str) -> "Trajectory":
        return cls.from_dict(json.loads(line))
