"""The one async interface every model backend implements.

A backend owns the model and its decode state. Each episode holds a ``Sequence``: the token ids so
far plus backend-private cache state (a KV cache, a slot). ``stream(seq, append, params)`` appends
``append`` to the sequence, prefills only the tokens the cache has not seen, then yields sampled
token ids one at a time (each already appended to ``seq.ids``). The caller stops early by closing
the iterator (``contextlib.aclosing``); the next ``stream`` call resumes on the same cache.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "Sequence", "SamplingParams", "common_prefix"]


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 256  # for this stream call
    # (open, close) tags of the active syntax: servers that stop on strings stop at these closes;
    # local backends ignore them (the runtime's parser stops the stream).
    stop_pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Sequence:
    """Token ids of one episode and the backend's cache state for it."""

    ids: list[int] = field(default_factory=list)
    state: Any = None  # backend-private (KV cache, slot index, ...)
    n_prefilled: int = 0  # tokens run through the model in prefill (cache misses), for measurement
    n_cached: int = 0  # tokens the cache already held when a stream call began, summed
    n_sampled: int = 0
    seed: int | None = None


class Backend(abc.ABC):
    """Model backend. Implementations: llama_cpp, transformers, openai, scripted."""

    name: str = ""
    model_id: str = ""
    context_size: int = 2048

    # -- text <-> tokens ----------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``special=True`` parses special-token text (only for text splice
        itself rendered, e.g. a chat template); tool output is always encoded with special=False."""

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages``, ending with the assistant turn start."""

    @property
    @abc.abstractmethod
    def eos_ids(self) -> set[int]: ...

    # -- generation -----------------------------------------------------------------------------
    def new_sequence(self, seed: int | None = None) -> Sequence:
        return Sequence(seed=seed)

    @abc.abstractmethod
    def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        """Append, prefill the uncached part, then yield sampled ids until EOS or max_tokens.
        EOS is appended to ``seq.ids`` and yielded too."""

    async def release(self, seq: Sequence) -> None:
        """Free the cache state of a finished sequence."""
        seq.state = None

    async def aclose(self) -> None:
        """Free the model."""

    async def __aenter__(self) -> "Backend":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
