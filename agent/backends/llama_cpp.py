"""llama.cpp backend (GGUF via llama-cpp-python).

One ``Llama`` holds one KV cache. A stream call takes the model lock for its whole segment, keeps
the longest common prefix of what the cache holds and the sequence's ids, and evaluates only the
rest, so a continuation after a splice prefills just the spliced tokens. Episodes that interleave
(one waits on a tool while another generates) each pay for the suffix that differs.

One thread owns the ``Llama`` for its whole life (load, every prefill and decode step, close). ggml's
CPU thread team belongs to the thread that first ran it; calls from changing worker threads (what
``asyncio.to_thread`` does) paid for a second team and ran at about half speed on 2 cores.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from agent.backends.base import Backend, SamplingParams, Sequence, common_prefix
from agent.backends.sampling import make_rng, sample_token
from agent.errors import ModelError, ModelNotFound, require

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend(Backend):
    name = "llama_cpp"

    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 adapter: str | Path | None = None, verbose: bool = False):
        llama_cpp = require("llama_cpp", "llama")
        path = Path(path)
        if not path.is_file():
            raise ModelNotFound(f"GGUF file not found: {path}")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="splice-llama")  # the model's one thread
        try:
            self.llm = self._thread.submit(
                llama_cpp.Llama, model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                n_batch=512, verbose=verbose, lora_path=str(adapter) if adapter else None,
                flash_attn=True,  # faster decode on CPU; numerics stay batch-shape-dependent (ARCHITECTURE.md)
            ).result()
        except (ValueError, RuntimeError) as e:
            self._thread.shutdown()
            raise ModelError(f"llama.cpp could not load {path}: {e}") from e
        self.model_id = path.name + (f"+{Path(adapter).name}" if adapter else "")
        self.context_size = self.llm.n_ctx()
        self._lock = asyncio.Lock()
        self._n_vocab = self.llm.n_vocab()
        self._formatter = self._make_formatter(llama_cpp)
        self._eos = {self.llm.token_eos()}
        eot = self.llm._model.token_eot()
        if eot >= 0:
            self._eos.add(eot)
        self.n_evaluated = 0  # tokens run through llama_decode, for measurement
        self.logits_trace: list[np.ndarray] | None = None  # set to [] to record each sampling row

    def _make_formatter(self, llama_cpp):  # noqa: ANN001
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

    # -- text <-> tokens ----------------------------------------------------------------------
    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize([i for i in ids if i not in self._eos]).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self._formatter is None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self._formatter(messages=messages).prompt

    @property
    def eos_ids(self) -> set[int]:
        return self._eos

    # -- generation -----------------------------------------------------------------------------
    def _prefill(self, ids: list[int]) -> int:
        """Make the cache hold ``ids`` with logits for the last one; returns tokens evaluated."""
        llm = self.llm
        keep = common_prefix(llm._input_ids.tolist(), ids)
        keep = min(keep, len(ids) - 1)  # always evaluate at least one token to get fresh logits
        if keep < llm.n_tokens:
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep
        todo = ids[keep:]
        llm.eval(todo)
        self.n_evaluated += len(todo)
        return len(todo)

    def _logits(self) -> np.ndarray:
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,))

    def _segment(self, seq: Sequence, ids: list[int], n: int, params: SamplingParams, rng: np.random.Generator,
                 put: Callable[[object], None], ack: threading.Semaphore, stop: threading.Event) -> None:
        """Model thread: prefill, then sample up to ``n`` tokens. Each token is handed over with
        ``put`` and evaluated at once, while the event loop parses it; the next one is sampled only
        after the loop acknowledges this one (``ack``), so nothing is sampled past a stop and the RNG
        draws exactly the tokens the episode keeps. The cache ends holding every handed-over token."""
        try:
            done = self._prefill(ids)
            seq.n_prefilled += done
            seq.n_cached += len(ids) - done
            for k in range(n):
                logits = self._logits()
                if self.logits_trace is not None:  # tests: the distribution each token came from
                    self.logits_trace.append(logits.copy())
                tok = sample_token(logits, params, rng)
                put(tok)
                if tok in self._eos:
                    break
                self.llm.eval([tok])
                self.n_evaluated += 1
                if k == n - 1:
                    break
                ack.acquire()
                if stop.is_set():
                    break
        except Exception as e:  # noqa: BLE001 - handed to the event loop, raised there as ModelError
            put(e)
        finally:
            put(None)

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        seq.ids.extend(append)
        if len(seq.ids) >= self.context_size:
            raise ModelError(f"context of {len(seq.ids)} tokens exceeds n_ctx={self.context_size}")
        if seq.state is None:
            seq.state = make_rng(seq.seed)
        loop = asyncio.get_running_loop()
        async with self._lock:
            queue: asyncio.Queue[object] = asyncio.Queue()
            ack, stop = threading.Semaphore(0), threading.Event()
            n = min(params.max_tokens, self.context_size - len(seq.ids))
            job = loop.run_in_executor(self._thread, self._segment, seq, list(seq.ids), n, params, seq.state,
                                       lambda x: loop.call_soon_threadsafe(queue.put_nowait, x), ack, stop)
            try:
                while (tok := await queue.get()) is not None:
                    if isinstance(tok, Exception):
                        raise ModelError(f"llama.cpp failed: {tok}") from tok
                    seq.ids.append(tok)
                    seq.n_sampled += 1
                    yield tok
                    ack.release()
            finally:
                stop.set()
                ack.release()
                await asyncio.shield(job)  # the model thread is idle before the lock is released

    async def aclose(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, llm.close)
            self._thread.shutdown()
