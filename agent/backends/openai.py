"""OpenAI-compatible completions backend: vLLM, SGLang, llama.cpp's server, llama-cpp-python's server.

The runtime speaks token ids; servers speak ``/v1/completions``. Choices made here:

* **Tokenizer: local.** ``encode``/``decode``/``chat_prompt`` are synchronous and run per token, so a
  round trip per call is out. The backend holds the served model's tokenizer locally (a GGUF file
  read with llama.cpp ``vocab_only``, or a Hugging Face tokenizer) and, on first use, checks it
  against the server's own tokenize endpoint (``/tokenize`` on vLLM/SGLang/llama.cpp,
  ``/extras/tokenize`` on llama-cpp-python) so a mismatch fails loudly instead of silently.
* **Prompt: token ids.** Each request sends the whole sequence as a list of ids (the OpenAI API
  allows it; vLLM, SGLang and llama.cpp accept it), so spliced tool output keeps exactly the ids the
  runtime chose (tool text is never re-parsed into special tokens) and a prefix-caching server
  prefills only the new suffix. A server that rejects id prompts (llama-cpp-python's, whose
  ``prompt`` must be a string) gets the detokenized text: special ids written out as their spelling,
  and any special-token spelling inside ordinary text (tool output printing ``<|im_end|>``) broken
  with a zero-width space, since such servers parse special tokens in string prompts.
* **Stops: the syntax's close tags.** Servers drop the matched stop string from the output, so the
  backend puts the close tag back (vLLM says which stop matched in ``stop_reason``; otherwise the
  close tag of the last unclosed open tag is used, and a stop with nothing open is EOS).
* **Sampled ids and log-probs: the server's.** Each request asks for ``logprobs`` and for the
  sampled ids (vLLM's ``return_token_ids``). The ids come from the server where it says them: vLLM's
  ``token_ids``, llama.cpp's ``logprobs.content[].id``, or (llama-cpp-python, which reports only
  each token's text) a reported token text that is exactly one vocabulary entry. Only where none of
  these is there is a text delta re-encoded locally (the text is exact; the ids can differ from the
  sampled ones at a delta's boundary), and every such token is counted in
  ``Sequence.n_retokenized`` (``Trajectory.token_exact`` is False then), never silently. A close tag
  put back after a stop string is such a token too, unless the server's ids already hold it.
  Log-probs go to ``Sequence.logprobs``; NaN where the server gave none for a token.
* **Streaming**: SSE.

One ``httpx.AsyncClient`` (keep-alive pool) serves every concurrent episode. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff; a retry after tokens were already
streamed resumes from the sequence so far. When retries run out it raises ``ModelError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.backends.base import SamplingParams, Sequence, TokenizedBackend
from agent.backends.config import BackendConfig
from agent.backends.llama_cpp import load_llama
from agent.backends.models import default_model_path
from agent.backends.tokenizer import GGUFTokenizer, HFTokenizer, LocalTokenizer
from agent.errors import ConfigError, ModelError, require
from agent.syntax import ToolSyntax, get_syntax

__all__ = ["OpenAIBackend", "load_tokenizer", "stop_pairs", "text_prompt"]

log = logging.getLogger("splice.backends.openai")

_PROBE = "Hello world: 12 + 30 = 42, naïve café."
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


ZWSP = "\u200b"


class GGUFVocab(GGUFTokenizer):
    """Tokenizer and chat template of a GGUF file, read with llama.cpp ``vocab_only`` (no weights)."""

    def __init__(self, path: str | Path):
        require("llama_cpp", "llama")
        super().__init__(load_llama(model_path=str(path), vocab_only=True, verbose=False))


def _hf_tokenizer(name: str | Path) -> HFTokenizer:
    """A Hugging Face tokenizer from a local directory or the local HF cache (no downloads)."""
    transformers = require("transformers", "torch")
    try:
        return HFTokenizer(transformers.AutoTokenizer.from_pretrained(str(name), local_files_only=True))
    except (OSError, ValueError) as e:
        raise ModelError(f"no local tokenizer {name!r} ({e}); pass tokenizer= a GGUF file or HF dir") from e


def load_tokenizer(spec: str | Path) -> LocalTokenizer:
    """``'default'`` (the embedded SmolLM2 GGUF), a ``.gguf`` file, or a HF tokenizer dir/name."""
    if str(spec) == "default":
        return GGUFVocab(default_model_path())
    if str(spec).endswith(".gguf"):
        return GGUFVocab(Path(spec).expanduser())
    return _hf_tokenizer(spec)


def text_prompt(tok: LocalTokenizer, ids: list[int]) -> str:
    """``ids`` as text for a server that parses special tokens in string prompts: each special id is
    written out, and a special-token spelling inside ordinary text gets a zero-width space after its
    first character, so the server re-reads exactly the control tokens the runtime chose."""
    special = tok.special_tokens() if hasattr(tok, "special_tokens") else {}  # a minimal custom tokenizer
    spellings = sorted({t for t in special.values() if len(t) > 1}, key=len, reverse=True)
    parts: list[str] = []
    run: list[int] = []
    for i in [*ids, None]:
        if i is None or i in special:
            text = tok.decode(run, special=True) if run else ""
            for sp in spellings:
                text = text.replace(sp, sp[0] + ZWSP + sp[1:])
            parts.append(text)
            run = []
            if i is not None:
                parts.append(special[i])
        else:
            run.append(i)
    return "".join(parts)


def stop_pairs(syntax: ToolSyntax, tools: Iterable[str]) -> list[tuple[str, str]]:
    """(open, close) tag pairs whose close tags end a model segment (see ``ToolSyntax.stop_pairs``)."""
    return syntax.stop_pairs(tools)


def _server_root(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class OpenAIBackend(TokenizedBackend):
    """A model behind an OpenAI-compatible ``/v1/completions`` server. ``async with`` it, or call
    ``aclose()``: that closes the shared HTTP client."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, *, tokenizer: str | Path | LocalTokenizer = "default",
                 api_key: str | None = None, stop: list[tuple[str, str]] | None = None, context_size: int = 4096,
                 timeout_s: float = 60.0, connect_timeout_s: float = 5.0, max_retries: int = 3,
                 backoff_s: float = 0.5, max_connections: int = 64, prompt_ids: bool = True,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = _server_root(base_url)
        self.model = model
        self.model_id = model or self.base_url
        self.tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.pairs = list(stop or [])
        self.context_size = context_size
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.prompt_ids = prompt_ids
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url, "headers": headers, "transport": transport,
            "timeout": httpx.Timeout(timeout_s, connect=connect_timeout_s),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)}
        self._client: httpx.AsyncClient | None = None
        self._ready: asyncio.Lock | None = None
        self._checked = False

    @classmethod
    def from_config(cls, model: str, cfg: BackendConfig, *, syntax: str = "splice",
                    tools: Iterable[str] = ()) -> OpenAIBackend:
        """``model`` is the server URL, or the served model name with ``cfg.base_url`` (or
        ``OPENAI_BASE_URL``) as the URL. ``cfg.tokenizer`` (else 'default'), ``cfg.api_key`` (else
        ``OPENAI_API_KEY``); generation stops at the close tags of ``syntax`` for ``tools``."""
        is_url = model.startswith(("http://", "https://"))
        url = model if is_url else cfg.base_url or os.environ.get("OPENAI_BASE_URL", "")
        if not url:
            raise ConfigError("the openai backend needs a server URL: --model http://HOST:PORT/v1, or the model "
                              "name with --base-url (or OPENAI_BASE_URL)")
        name = None if is_url or model == "default" else model
        return cls(url, name, tokenizer=cfg.tokenizer or "default", context_size=cfg.n_ctx,
                   api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY"),
                   stop=stop_pairs(get_syntax(syntax), list(tools)))

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(**self._client_args)
        return self._client

    async def __aenter__(self) -> OpenAIBackend:
        await self.check()
        return self

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def check(self) -> None:
        """Reach the server (with retries), learn the model name, compare tokenizers. Once."""
        if self._checked:
            return
        self._ready = self._ready or asyncio.Lock()
        async with self._ready:
            if self._checked:
                return
            models = await self._request("GET", "/v1/models")
            data = models.json().get("data") or [{}]
            self.model = self.model or data[0].get("id")
            self.model_id = self.model or self.model_id
            self.context_size = int(data[0].get("max_model_len") or self.context_size)
            await self._check_tokenizer()
            self._checked = True

    async def _check_tokenizer(self) -> None:
        local = self.encode(_PROBE)
        for path, body in (("/tokenize", {"model": self.model, "prompt": _PROBE, "content": _PROBE,
                                         "add_special_tokens": False}),
                           ("/extras/tokenize", {"input": _PROBE})):
            try:
                r = await self.client.post(path, json=body)
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and isinstance(r.json().get("tokens"), list):
                remote = [t if isinstance(t, int) else t.get("id") for t in r.json()["tokens"]]
                if remote[-len(local):] != local or len(remote) > len(local) + 1:  # allow a BOS
                    raise ModelError(f"the local tokenizer does not match the server's at {self.base_url}{path}: "
                                     f"{local} vs {remote}; pass the served model's tokenizer")
                return
        log.info("server %s has no tokenize endpoint; trusting the local tokenizer", self.base_url)

    # -- HTTP with retries ---------------------------------------------------------------------------
    async def _backoff(self, attempt: int, err: object) -> None:
        if attempt >= self.max_retries:
            raise ModelError(f"OpenAI-compatible server at {self.base_url} failed after {attempt + 1} tries: {err}")
        log.warning("server %s: %s; retry %d/%d", self.base_url, err, attempt + 1, self.max_retries)
        await asyncio.sleep(self.backoff_s * 2**attempt)

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                r = await self.client.request(method, path, **kw)
            except httpx.TransportError as e:
                await self._backoff(attempt, f"{type(e).__name__}: {e}")
                continue
            if r.status_code in _RETRY_STATUS:
                await self._backoff(attempt, f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            if r.status_code >= 400:
                raise ModelError(f"{method} {self.base_url}{path}: HTTP {r.status_code}: {r.text[:500]}")
            return r
        raise AssertionError("unreachable")

    # -- generation --------------------------------------------------------------------------------
    def request_body(self, seq: Sequence, params: SamplingParams, max_tokens: int) -> dict[str, Any]:
        """The ``/v1/completions`` body; subclasses may add server extensions (grammar, ...)."""
        prompt: Any = list(seq.ids) if self.prompt_ids else text_prompt(self.tok, seq.ids)
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                                "temperature": params.temperature, "top_p": params.top_p,
                                "logprobs": 1, "return_token_ids": True}
        pairs = params.stop_pairs or self.pairs
        if pairs:
            body["stop"] = [close for _, close in pairs]
        if params.top_k:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if params.banned:
            body["logit_bias"] = {str(t): -100 for t in sorted(params.banned)}
        return body

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One streamed completion: each SSE ``choices[0]`` object. Raises httpx errors for retry."""
        async with self.client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code >= 400:
                await r.aread()
                raise _HTTPStatus(r.status_code, r.text)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ModelError(f"server error: {event['error']}")
                if event.get("choices"):
                    yield event["choices"][0]

    def _close_tag(self, text: str, choice: dict[str, Any], pairs: Iterable[tuple[str, str]] = ()) -> str | None:
        """The stop string that ended generation (to put back), or None for EOS."""
        if "stop_reason" in choice:  # vLLM/SGLang: the matched string, a token id, or None (EOS)
            reason = choice["stop_reason"]
            return reason if isinstance(reason, str) else None
        best, at = None, -1
        for open_, close in pairs or self.pairs:
            i = text.rfind(open_)
            if i > at and text.rfind(close) < i:
                best, at = close, i
        return best

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        seq.ids.extend(append)
        await self.check()
        seq.n_prefilled += len(append)  # what a prefix-caching server has to prefill
        seq.n_cached += len(seq.ids) - len(append)
        st = _Progress(left=min(params.max_tokens, self.context_size - len(seq.ids)))
        attempt = 0
        while st.left > 0:
            before = st.left
            try:
                async with contextlib.aclosing(self._attempt(seq, params, st)) as toks:
                    async for tok in toks:
                        yield tok
                if st.finished:
                    return
                err: object = "the stream ended before a finish_reason (interrupted by the server?)"
            except _HTTPStatus as e:
                if self.prompt_ids and not st.text and e.rejects_prompt:
                    log.info("server rejected a token-id prompt (HTTP %s); sending text", e.status)
                    self.prompt_ids = False
                    continue
                if e.status not in _RETRY_STATUS:
                    raise ModelError(f"POST {self.base_url}/v1/completions: HTTP {e.status}: {e.body[:500]}") from e
                err = e
            except (httpx.TransportError, httpx.DecodingError) as e:
                err = f"{type(e).__name__}: {e}"
            attempt = 0 if st.left < before else attempt + 1  # a request that made progress resets
            await self._backoff(attempt, err)

    def _piece_id(self, piece: Any) -> int | None:
        """The id of a token the server reported only as text: the one vocabulary entry spelling it."""
        if not isinstance(piece, str) or not piece:
            return None
        if piece.startswith("token_id:") and piece[9:].isdigit():  # vLLM return_tokens_as_token_ids
            return int(piece[9:])
        ids = self.encode(piece)
        return ids[0] if len(ids) == 1 and self.tok.decode(ids) == piece else None

    def _sampled(self, choice: dict[str, Any]) -> tuple[list[int] | None, list[float] | None]:
        """The ids (None: not reported) and log-probs (None: not reported) of one streamed chunk."""
        ids = choice.get("token_ids")  # vLLM return_token_ids
        ids = [int(i) for i in ids] if isinstance(ids, list) else None
        lp = choice.get("logprobs")
        lps: list[float] | None = None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):  # llama.cpp server, chat style
            items = [c for c in lp["content"] if isinstance(c, dict)]
            lps = [c.get("logprob") for c in items]
            if ids is None and items and all(isinstance(c.get("id"), int) for c in items):
                ids = [c["id"] for c in items]
        elif isinstance(lp, dict) and isinstance(lp.get("token_logprobs"), list):  # completions style
            lps = lp["token_logprobs"]
            pieces = lp.get("tokens")
            if ids is None and isinstance(pieces, list) and len(pieces) == len(lps) and pieces:
                found = [self._piece_id(p) for p in pieces]
                ids = [i for i in found if i is not None] if None not in found else None
        if lps is not None:
            lps = [float(x) if isinstance(x, (int, float)) else math.nan for x in lps]
        return ids, lps

    async def _attempt(self, seq: Sequence, params: SamplingParams, st: _Progress) -> AsyncIterator[int]:
        """One request, resuming from ``seq``: yields ids (appended to ``seq``) as text arrives."""
        async with contextlib.aclosing(self._events(self.request_body(seq, params, st.left))) as events:
            async for choice in events:
                delta = choice.get("text") or ""
                st.text += delta
                reported, lps = self._sampled(choice)
                ids = reported if reported is not None else self.encode(delta)
                sure = [reported is not None] * len(ids)  # False: re-encoded from text
                if lps is None or len(lps) != len(ids):
                    lps = [math.nan] * len(ids)
                st.ids += ids
                finish = choice.get("finish_reason")
                if finish == "stop":
                    tag = self._close_tag(st.text, choice, params.stop_pairs)
                    if tag is None:
                        if not (st.ids and st.ids[-1] in self.eos_ids):  # EOS, not reported: the one EOS id
                            ids, lps, sure = ids + [min(self.eos_ids)], lps + [math.nan], sure + [
                                len(self.eos_ids) == 1]
                    elif missing := self._missing_tag(st, tag):
                        put_back = self.encode(missing)
                        ids, lps, sure = ids + put_back, lps + [math.nan] * len(put_back), sure + [False] * len(
                            put_back)
                for k, tok in enumerate(ids[: st.left]):
                    seq.record(tok, lps[k])
                    seq.n_retokenized += not sure[k]
                    st.left -= 1
                    yield tok
                if finish is not None:
                    st.finished = True
                    return

    def _missing_tag(self, st: _Progress, tag: str) -> str:
        """The part of the close tag the server cut from its text that its reported ids do not hold
        (servers that report the stop tokens hold some or all of it)."""
        extra = self.tok.decode(st.ids)[len(st.text):]
        if tag in extra:
            return ""
        for k in range(len(tag), 0, -1):
            if extra.endswith(tag[:k]):
                return tag[k:]
        return tag


@dataclass
class _Progress:
    left: int  # tokens still allowed in this stream call
    text: str = ""  # generated so far in this stream call
    ids: list[int] = field(default_factory=list)  # ids of this stream call (reported or re-encoded)
    finished: bool = False


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status, self.body = status, body

    @property
    def rejects_prompt(self) -> bool:
        """A validation error about the prompt field (llama-cpp-python reports those as 500)."""
        return self.status in (400, 422, 500) and "prompt" in self.body
