"""A scripted fake model for unit tests of the loop: it "samples" pre-written text one character at a
time. Token id = Unicode code point; id 0 is EOS. Not a model: never the only test of a feature.

With ``tokenizer=`` (anything with ``encode``/``decode``/``chat_prompt``/``eos_ids``, e.g. the GGUF
vocabulary ``agent.backends.openai.GGUFVocab``) ids, special tokens and the chat template are the real
model's, and each turn's text is "sampled" as that tokenizer's ids: for tests where token identity
matters.

``logprobs`` (a function of the ids so far and the token about to be "sampled") gives each token's
log-prob in ``Sequence.logprobs``; without it they are NaN, since a script has no distribution."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent.backends.base import Backend, SamplingParams, Sequence

__all__ = ["ScriptedBackend"]

EOS = 0


class ScriptedBackend(Backend):
    """``script`` is a list of model turns (each ``stream`` call emits the next one, and EOS after
    the last) or a function of the decoded context returning the text to emit next."""

    name = "scripted"

    def __init__(self, script: list[str] | Callable[[str], str], token_delay_s: float = 0.0,
                 context_size: int = 100_000, tokenizer: Any = None,
                 logprobs: Callable[[list[int], int], float] | None = None):
        self.script = script
        self.logprobs = logprobs
        self.tokenizer = tokenizer
        self.token_delay_s = token_delay_s
        self.context_size = context_size
        self.model_id = "scripted"
        self.prompts: list[str] = []  # every rendered chat prompt, for assertions

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        if self.tokenizer is not None:
            return self.tokenizer.encode(text, special=special)
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        return "".join(chr(i) for i in ids if i != EOS)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.chat_prompt(messages)
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"

    def encode_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        text, ids = super().encode_chat(messages)
        self.prompts.append(text)
        return text, ids

    @property
    def eos_ids(self) -> set[int]:
        return set(self.tokenizer.eos_ids) if self.tokenizer is not None else {EOS}

    @property
    def _eos(self) -> int:
        return min(self.eos_ids)

    def _next_text(self, seq: Sequence) -> tuple[str, bool]:
        turn = seq.state or 0
        seq.state = turn + 1
        if callable(self.script):
            text = self.script(self.decode(seq.ids))
            return text, not text
        if turn >= len(self.script):
            return "", True
        return self.script[turn], turn == len(self.script) - 1

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        seq.ids.extend(append)
        seq.n_prefilled += len(append)
        text, last = self._next_text(seq)
        ids = self.encode(text) + ([self._eos] if last else [])
        for tok in ids[: params.max_tokens]:
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            else:
                await asyncio.sleep(0)
            seq.record(tok, float(self.logprobs(seq.ids, tok)) if self.logprobs else math.nan)
            yield tok
