"""The one tokenizer adapter: text <-> ids and the chat prompt, for every backend and for SFT rendering.

``GGUFTokenizer`` wraps a loaded llama.cpp model (full, or ``vocab_only``); ``HFTokenizer`` wraps a
Hugging Face tokenizer. Both give the same interface the runtime uses per token:

* ``encode(text, special=False)``: special-token spellings become control ids only with
  ``special=True`` (template markup, tags); tool output and user text are always encoded without;
* ``decode(ids, special=False)``: end-of-sequence ids dropped; control tokens written out only with
  ``special=True``;
* ``chat_prompt(messages)``: the model's chat template (ending with the assistant turn start), or,
  for a model without one, ``prompts/chat_fallback.j2``;
* ``eos_ids`` and ``special_tokens()``.

The llama.cpp and transformers backends delegate to these, and ``train.render.ChatRenderer``
encodes with ``HFTokenizer``, so SFT tokens equal runtime tokens by construction
(``tests/test_tokenizer.py`` checks it for every syntax).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prompts import render

__all__ = ["GGUFTokenizer", "HFTokenizer", "LocalTokenizer", "chat_fallback"]


class LocalTokenizer(Protocol):
    eos_ids: set[int]

    def special_tokens(self) -> dict[int, str]: ...
    def encode(self, text: str, *, special: bool = False) -> list[int]: ...
    def decode(self, ids: list[int], *, special: bool = False) -> str: ...
    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...


def chat_fallback(messages: list[dict[str, str]]) -> str:
    """The prompt of a model without a chat template: ``role: content`` lines, then ``assistant: ``."""
    return render("chat_fallback.j2", messages=messages)


class GGUFTokenizer:
    """The vocabulary and chat template of a loaded ``llama_cpp.Llama``."""

    def __init__(self, llm: Any, eos_ids: Iterable[int] | None = None):
        self.llm = llm
        if eos_ids is None:
            eos_ids = {llm.token_eos()}
            eot = llm._model.token_eot()  # private: see the llama-cpp-python bound in pyproject.toml
            if eot >= 0:
                eos_ids.add(eot)
        self.eos_ids = set(eos_ids)
        self._special: dict[int, str] | None = None
        self._fmt = self._formatter()

    def _formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            return None

        def tok(key: str) -> str:
            i = int(meta.get(key, -1))
            return self.llm._model.token_get_text(i) if i >= 0 else ""

        return Jinja2ChatFormatter(template, eos_token=tok("tokenizer.ggml.eos_token_id"),
                                   bos_token=tok("tokenizer.ggml.bos_token_id"))

    @property
    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template") or None

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def decode(self, ids: list[int], *, special: bool = False) -> str:
        ids = ids if special else [i for i in ids if i not in self.eos_ids]
        return self.llm.detokenize(ids, special=special).decode("utf-8", errors="replace")

    def special_tokens(self) -> dict[int, str]:
        """Control tokens: ids whose text is written only when detokenizing with ``special=True``."""
        if self._special is None:
            det = self.llm.detokenize
            self._special = {i: det([i], special=True).decode("utf-8", "replace") for i in range(self.llm.n_vocab())
                             if not det([i], special=False) and det([i], special=True)}
        return self._special

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self._fmt is None:
            return chat_fallback(messages)
        return self._fmt(messages=messages).prompt


class HFTokenizer:
    """A Hugging Face tokenizer (``tok``), with the end-of-sequence ids of its model."""

    def __init__(self, tok: Any, eos_ids: Iterable[int] | None = None):
        self.tok = tok
        if eos_ids is None:
            eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        self.eos_ids = set(eos_ids)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tok, "chat_template", None) or None

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self.tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def decode(self, ids: list[int], *, special: bool = False) -> str:
        ids = ids if special else [i for i in ids if i not in self.eos_ids]
        return self.tok.decode(ids, skip_special_tokens=False)

    def special_tokens(self) -> dict[int, str]:
        return {i: t.content for i, t in self.tok.added_tokens_decoder.items() if t.special}

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.chat_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat_fallback(messages)
