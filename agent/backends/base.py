"""The one async interface every model backend implements.

A backend owns the model and its decode state. Each episode holds a ``Sequence``: the token ids so
far plus backend-private cache state (a KV cache, a slot). ``stream(seq, append, params)`` appends
``append`` to the sequence, prefills only the tokens the cache has not seen, then yields sampled
token ids one at a time (each already appended to ``seq.ids``, its log-prob to ``seq.logprobs``).
The caller stops early by closing the iterator (``contextlib.aclosing``); the next ``stream`` call
resumes on the same cache.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "ModelThread", "Sequence", "SamplingParams", "common_prefix", "encode_chat"]

log = logging.getLogger("splice.backends")
_MARK = "\ue000{}\ue001"  # private-use characters: a placeholder for message i in a rendered template
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


class ModelThread(ThreadPoolExecutor):
    """The one thread a local backend runs its model on: load, every forward, close.

    CPU math libraries keep a worker team per calling thread (ggml's and torch's OpenMP teams), so a
    model called from whichever of asyncio's worker threads is free (``asyncio.to_thread``) feeds two
    or more teams that compete for the cores. Measured on 2 cores: llama.cpp ran at about half speed,
    and the transformers forward of 8 sequences at 0.75x (to_thread hopped between two threads);
    one thread for the model's life gives the raw speed back (``docs/speed.md``)."""

    def __init__(self, name: str):
        super().__init__(1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the model thread, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self, fn, *args)


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
    # the runtime's own stop rule, for backends that sample on another thread: ``stopper()`` makes a
    # fresh ``check(token) -> bool`` per stream call (True: this token ends the segment), so the
    # model thread stops at the same token as the event loop's parser without waiting for it
    stopper: Callable[[], Callable[[int], bool]] | None = field(default=None, compare=False, repr=False)
    # token ids never sampled (greedy too): their logit counts as -inf; servers get logit_bias -100
    banned: frozenset[int] = frozenset()

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
    # log-prob of each sampled token under the model's unscaled distribution (temperature 1, before
    # top-k/top-p), appended by the backend right before it yields that token; NaN where a backend
    # cannot say. One entry per sampled token, in order, across stream calls.
    logprobs: list[float] = field(default_factory=list)
    # sampled tokens whose ids a server did not report, so they were re-encoded from its text
    n_retokenized: int = 0

    def record(self, tok: int, logprob: float) -> None:
        """A token the backend sampled: its id, its log-prob, the count."""
        self.ids.append(tok)
        self.logprobs.append(logprob)
        self.n_sampled += 1


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

    def encode_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        """The chat prompt as (text, ids): template markup as special tokens, message content never
        (``encode_chat``)."""
        return encode_chat(self.chat_prompt, self.encode, messages)

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


class TokenizedBackend(Backend):
    """A backend whose text <-> tokens go through one local tokenizer adapter, ``self.tok``
    (``agent.backends.tokenizer``); ``eos_ids`` is the adapter's, or ``self._eos`` when the backend
    sets its own (the model's generation config adds ids)."""

    tok: Any
    _eos: set[int] | None = None

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self.tok.encode(text, special=special)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tok.chat_prompt(messages)

    @property
    def eos_ids(self) -> set[int]:
        return self._eos if self._eos is not None else self.tok.eos_ids


def encode_chat(render: Callable[[list[dict[str, str]]], str], encode: Callable[..., list[int]],
                messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """Apply a chat template and tokenise it so that only the template's own markup can become
    special tokens: message content (tool output in history, user text) is encoded with
    ``special=False``, so a result printing ``<|im_start|>system`` stays text. A message may carry
    ``token_ids`` (the exact ids of an earlier turn), used as they are; ``special: True`` marks
    content splice rendered itself (the system prompt), whose tags may be special tokens.

    The template is rendered once with a placeholder per message to find where content goes. A
    template that rewrites content (so the pieces do not add up to the real rendering) falls back
    to tokenising the whole prompt with special tokens, with a warning."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = render(plain)
    skeleton = render([{"role": m["role"], "content": _MARK.format(i)} for i, m in enumerate(messages)])
    parts = _MARK_RE.split(skeleton)  # markup, index, markup, index, ..., markup
    order = [int(i) for i in parts[1::2]]
    if order != sorted(set(order)) or "".join(
            p if k % 2 == 0 else messages[int(p)]["content"] for k, p in enumerate(parts)) != text:
        log.warning("the chat template rewrites message content; tokenising the prompt with special tokens")
        return text, encode(text, special=True)
    ids: list[int] = []
    for k, p in enumerate(parts):
        if k % 2 == 0:
            ids += encode(p, special=True) if p else []
            continue
        m = messages[int(p)]
        if m.get("token_ids") is not None:
            ids += list(m["token_ids"])
        elif m["content"]:
            ids += encode(m["content"], special=bool(m.get("special")))
    return text, ids
