"""llama.cpp backend (GGUF via llama-cpp-python).

With ``n_seq=1`` (the default) one ``Llama`` holds one KV cache. A stream call takes the model lock
for its whole segment, keeps the longest common prefix of what the cache holds and the sequence's
ids, and evaluates only the rest, so a continuation after a splice prefills just the spliced tokens.
Episodes that interleave (one waits on a tool while another generates) each pay for the suffix that
differs.

With ``n_seq > 1`` the context holds ``n_seq`` KV sequences (llama.cpp ``n_seq_max``) in one unified
buffer of ``n_ctx * n_seq`` cells (``kv_unified``: ``seq_cp`` shares a prompt prefix's cells instead
of copying a stream); each sequence may use up to ``n_ctx`` of them. A scheduler task
(``_MultiSeq``, the design of ``batched.py``) gives each episode a sequence id and runs one
``llama_decode`` per step over a batch that holds one token of every decoding episode plus chunks of
the prefilling ones, each token tagged with its episode's ``seq_id``. An episode whose stream closes
(it wrote a tool call) leaves the batch and keeps its sequence; when it streams again only the
splice is prefilled. Design notes and numbers: docs/speed.md.

One thread owns the ``Llama`` for its whole life (load, every prefill and decode step, close). ggml's
CPU thread team belongs to the thread that first ran it; calls from changing worker threads (what
``asyncio.to_thread`` does) paid for a second team and ran at about half speed on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import ModelThread, SamplingParams, Sequence, TokenizedBackend, common_prefix
from agent.backends.lora_merge import write_merged
from agent.backends.models import cache_path
from agent.backends.sampling import make_rng, sample_token
from agent.backends.scheduling import DecodeLoop
from agent.backends.tokenizer import GGUFTokenizer
from agent.errors import ModelError, ModelNotFound, require

__all__ = ["LlamaCppBackend", "WEIGHT_FORMATS", "disable_unsafe_extra_buffers", "load_llama", "merged",
           "requantized"]

log = logging.getLogger("splice.backends.llama_cpp")
N_BATCH = 512  # tokens per llama_decode call (prefill chunks and decode tokens together)
_LOAD_LOCK = threading.Lock()


def extra_buffers_allowed(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether llama.cpp may use its extra CPU weight buffers (AMX, repacked layouts).

    Some virtual machines advertise AMX in CPUID (and the kernel grants the tile permission) but
    trap the first tile instruction: ggml's AMX kernels then kill the process with SIGILL on the
    first multi-token batch. So where the CPU advertises AMX they stay off unless
    ``SPLICE_LLAMA_EXTRA_BUFTS=1`` says this host runs them; elsewhere they are on (for the default
    Q4_1 model nothing else changes: the repacked layouts cover other quantisations).
    """
    env = os.environ.get("SPLICE_LLAMA_EXTRA_BUFTS")
    if env is not None:
        return env.strip() == "1"
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return True
    return " amx_tile" not in flags


def _safe_model_defaults(llama_cpp: Any) -> tuple[Any, Any]:
    """(module, its original ``llama_model_default_params``) after swapping in one that turns the
    extra buffers off. ``Llama.__init__`` reads its model params from that module's defaults."""
    low = llama_cpp.llama.llama_cpp
    default = low.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False  # a llama_model_params field (see the bound in pyproject.toml)
        return p

    low.llama_model_default_params = params
    return low, default


def load_llama(**kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)``, with the extra CPU buffers off where they are not safe
    (``extra_buffers_allowed``). The one place splice, its benchmarks and tests load a GGUF."""
    llama_cpp = require("llama_cpp", "llama")
    if extra_buffers_allowed():
        return llama_cpp.Llama(**kwargs)
    with _LOAD_LOCK:
        low, default = _safe_model_defaults(llama_cpp)
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low.llama_model_default_params = default


def disable_unsafe_extra_buffers() -> None:
    """For this whole process, where ``extra_buffers_allowed`` says no: for code that constructs
    ``llama_cpp.Llama`` itself, e.g. ``python -m llama_cpp.server`` started through
    ``python -m agent.backends.llama_server``."""
    if not extra_buffers_allowed():
        _safe_model_defaults(require("llama_cpp", "llama"))


WEIGHT_FORMATS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}  # requantize targets (``BackendConfig.weights``)


def requantized(path: str | Path, fmt: str = "q8_0") -> Path:
    """A copy of the GGUF at ``path`` with its weights in ``fmt``, made once with llama.cpp's own
    quantizer (0.7 s for the default model) and kept in splice's cache (``models.cache_path``: keyed by
    the source's path, size and mtime). Written to a temporary name and renamed, so concurrent first
    uses never see half a file.

    Why: llama.cpp's CPU matrix kernels for Q4_1 gain little from a batch of tokens (8 sequences of
    one token ran 1.4-1.7x one token here), while Q8_0 goes through its blocked GEMM: measured on
    the default model, same single-stream decode (1.01x) and 1.23x faster 8-sequence steps. Q8_0
    holds the Q4_1 values to within 1/254 of each block's largest weight; both kernels quantize the
    activations, and teacher-forced both are about as far from the exact float weights (median
    largest logit difference 0.68 for Q4_1, 0.81 for Q8_0), so outputs move only at near-ties, as
    with llama.cpp's batch-shape numerics (ARCHITECTURE.md). docs/speed.md has the figures."""
    llama_cpp = require("llama_cpp", "llama")
    path = Path(path)
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose {', '.join(WEIGHT_FORMATS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, WEIGHT_FORMATS[fmt])
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1

    def make(tmp: Path) -> None:
        quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python prints llama.cpp's log at its level
        level = quiet.level
        quiet.setLevel(max(level, logging.ERROR))
        try:
            rc = llama_cpp.llama_model_quantize(str(path).encode(), str(tmp).encode(), ctypes.byref(params))
        finally:
            quiet.setLevel(level)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize returned {rc}")

    return _cached_file(cache_path(path, f"gguf-{fmt}") / f"{path.stem}.{fmt}.gguf", make,
                        f"requantized {path.name} to {fmt}")


def _cached_file(out: Path, make: Callable[[Path], None], what: str) -> Path:
    """``out`` if it exists, else ``make(tmp)`` then ``tmp`` renamed to ``out``: concurrent first
    uses never see half a file, and a failed ``make`` leaves nothing behind."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    t0 = time.perf_counter()
    try:
        make(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s in %.2f s: %s", what, time.perf_counter() - t0, out)
    return out


def merged(path: str | Path, adapter: str | Path, fmt: str = "q8_0") -> Path:
    """A copy of the GGUF at ``path`` with the LoRA adapter GGUF ``adapter`` folded into its weights
    (``W + alpha / r * B @ A`` per adapted matrix, in float32) and every quantized tensor stored in
    ``fmt`` (``agent.backends.lora_merge``: about 0.6 s for the default model and its shipped adapter
    through llama.cpp's own C library), made once and kept in splice's cache, keyed by both files,
    written to a temporary name and renamed like ``requantized``.

    Why: llama.cpp applies a LoRA adapter at run time as extra matrix products beside each adapted
    weight, unmerged; on the default model that cost a third of its decode speed (raw llama-cpp-python
    with the shipped adapter 71 tok/s, without 103). The merged copy decodes at the base's speed
    and gives the same greedy answers (tests/test_weights.py; docs/speed.md has the figures).
    Needs the ``gguf`` package; raises ``ModelError`` for what it cannot read, e.g. a file that is
    not a LoRA adapter of this base."""
    gguf = require("gguf", "llama")
    path, adapter = Path(path), Path(adapter)
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose {', '.join(WEIGHT_FORMATS)}")
    out = (cache_path(path, f"gguf-{fmt}-merged") / cache_path(adapter, "lora").name
           / f"{path.stem}+{adapter.stem}.{fmt}.gguf")
    try:
        return _cached_file(out, lambda tmp: write_merged(path, adapter, tmp, fmt),
                            f"merged {adapter.name} into {path.name} ({fmt})")
    except (ValueError, KeyError, NotImplementedError, gguf.quants.QuantError) as e:
        raise ModelError(f"could not merge {adapter.name} into {path.name}: {e}") from e


HANDOVER_S = 0.02  # n_seq=1: the model thread wakes the event loop at most this often (plus first/last)


class LlamaCppBackend(TokenizedBackend):
    name = "llama_cpp"

    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 adapter: str | Path | None = None, verbose: bool = False, n_seq: int = 1):
        """``n_seq > 1``: that many episodes decode together, each with its own ``n_ctx`` tokens
        of KV (``n_ctx * n_seq`` in all); ``n_seq == 1``: one cache shared in turn (module doc)."""
        llama_cpp = require("llama_cpp", "llama")
        path = Path(path)
        if not path.is_file():
            raise ModelNotFound(f"GGUF file not found: {path}")
        if not 1 <= n_seq <= llama_cpp.llama_max_parallel_sequences():
            raise ValueError(f"n_seq must be in [1, {llama_cpp.llama_max_parallel_sequences()}] (got {n_seq})")
        self.n_seq = n_seq
        self._thread = ModelThread("splice-llama")
        try:
            self.llm = self._thread.submit(
                load_llama, model_path=str(path), n_ctx=n_ctx if n_seq == 1 else 64,  # n_seq > 1: own context
                n_threads=n_threads or os.cpu_count(), n_batch=N_BATCH, verbose=verbose,
                lora_path=str(adapter) if adapter else None,
                flash_attn=True,  # faster decode on CPU; numerics stay batch-shape-dependent (ARCHITECTURE.md)
            ).result()
            self._multi_ctx = None if n_seq == 1 else self._thread.submit(self._new_context, n_ctx, verbose).result()
        except (ValueError, RuntimeError) as e:
            llm = getattr(self, "llm", None)
            if llm is not None:
                self._thread.submit(llm.close).result()
            self._thread.shutdown()
            raise ModelError(f"llama.cpp could not load {path}: {e}") from e
        self.model_id = path.name + (f"+{Path(adapter).name}" if adapter else "")
        self.context_size = self.llm.n_ctx() if n_seq == 1 else self._multi_ctx.n_ctx_seq
        self._lock = asyncio.Lock()
        self._sched: _MultiSeq | None = None
        self._n_vocab = self.llm.n_vocab()
        self.tok = GGUFTokenizer(self.llm)
        self._eos = self.tok.eos_ids
        self.n_evaluated = 0  # tokens run through llama_decode, for measurement
        self.logits_trace: list[np.ndarray] | None = None  # set to [] to record each sampling row
        # n_seq > 1, tests: set to {} to record, per sequence (``id(seq)``), the row of each token
        self.seq_traces: dict[int, list[np.ndarray]] | None = None

    def _new_context(self, n_ctx: int, verbose: bool) -> "_MultiContext":
        return _MultiContext(self.llm, n_ctx, self.n_seq, verbose)

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
                 out: deque, notify: Callable[[], None], stop: threading.Event,
                 states: list[Any] | None) -> None:
        """Model thread: prefill, then sample up to ``n`` tokens, each evaluated at once, without
        waiting for the event loop. The stop rule runs here (``params.stopper``: the runtime's own
        parser), so the segment ends at the same token the loop's parser stops at and nothing is
        sampled past it. Tokens go to ``out``; the loop is woken for the first token, then at most
        every ``HANDOVER_S`` and at the end: a wake per token costs a core-switch on a machine whose
        cores the ggml threads keep busy. ``states`` (sampling only) gets the RNG state before each
        draw, so a consumer that stops early without a stopper can rewind to what it kept."""
        check = params.stopper() if params.stopper is not None else None
        last = 0.0
        try:
            done = self._prefill(ids)
            seq.n_prefilled += done
            seq.n_cached += len(ids) - done
            for k in range(n):
                logits = self._logits()
                if self.logits_trace is not None:  # tests: the distribution each token came from
                    self.logits_trace.append(logits.copy())
                if states is not None:
                    states.append(rng.bit_generator.state)
                tok = sample_token(logits, params, rng)
                out.append((tok, _logprob(logits, tok)))
                now = time.perf_counter()
                if k == 0 or now - last >= HANDOVER_S:
                    notify()
                    last = now
                if tok in self._eos:
                    break
                self.llm.eval([tok])
                self.n_evaluated += 1
                if stop.is_set() or (check is not None and check(tok)):
                    break
        except Exception as e:  # noqa: BLE001 - handed to the event loop, raised there as ModelError
            out.append(e)
        finally:
            out.append(None)
            notify()

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        bad = [t for t in append if not 0 <= t < self._n_vocab]
        if bad:  # would fail the whole llama_decode batch, every episode in it
            raise ModelError(f"token ids outside the vocabulary (0..{self._n_vocab - 1}): {bad[:5]}")
        seq.ids.extend(append)
        if len(seq.ids) >= self.context_size:
            raise ModelError(f"context of {len(seq.ids)} tokens exceeds n_ctx={self.context_size}")
        inner = self._stream_one(seq, params) if self.n_seq == 1 else self._stream_multi(seq, params)
        async with contextlib.aclosing(inner) as toks:
            async for tok in toks:
                yield tok

    async def _stream_one(self, seq: Sequence, params: SamplingParams) -> AsyncIterator[int]:
        if seq.state is None:
            seq.state = make_rng(seq.seed)
        loop = asyncio.get_running_loop()
        async with self._lock:
            out: deque = deque()
            ready, stop = asyncio.Event(), threading.Event()
            states: list[Any] | None = None if params.greedy else []
            n = min(params.max_tokens, self.context_size - len(seq.ids))
            job = loop.run_in_executor(self._thread, self._segment, seq, list(seq.ids), n, params, seq.state,
                                       out, lambda: loop.call_soon_threadsafe(ready.set), stop, states)
            taken = 0
            try:
                while True:
                    await ready.wait()
                    ready.clear()  # before draining: a token added meanwhile sets it again
                    while out:
                        tok = out.popleft()
                        if tok is None:
                            return
                        if isinstance(tok, Exception):
                            raise ModelError(f"llama.cpp failed: {tok}") from tok
                        tok, lp = tok
                        seq.record(tok, lp)
                        taken += 1
                        yield tok
            finally:
                stop.set()
                await asyncio.shield(job)  # the model thread is idle before the lock is released
                if states is not None and taken < len(states):
                    # stopped early without a stopper: rewind the RNG to the draws it kept (the cache's
                    # extra tokens are cut by the next prefill, which keeps only the common prefix)
                    seq.state.bit_generator.state = states[taken]

    # -- n_seq > 1: one decode loop for every running episode ---------------------------------------
    def _scheduler(self) -> "_MultiSeq":
        loop = asyncio.get_running_loop()
        s = self._sched
        if s is not None and s.loop is loop and not s.task.done():
            return s
        if s is not None and s.loop is not loop and s.loop.is_running():
            raise ModelError("a multi-sequence llama.cpp backend serves one event loop at a time")
        if self.llm is None:
            raise ModelError("the llama.cpp backend is closed")
        self._sched = _MultiSeq(self)
        return self._sched

    async def _stream_multi(self, seq: Sequence, params: SamplingParams) -> AsyncIterator[int]:
        sched = self._scheduler()
        st = seq.state
        if not isinstance(st, _SeqState) or st.owner is not sched:
            key = seq.seed if seq.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
            st = seq.state = _SeqState(owner=sched, key=key)
        traces = self.seq_traces
        req = _Req(seq, params, st, trace=None if traces is None else traces.setdefault(id(seq), []))
        async with contextlib.aclosing(sched.stream(req, "llama.cpp")) as toks:
            async for tok in toks:
                yield tok

    async def release(self, seq: Sequence) -> None:
        st, seq.state = seq.state, None
        s = self._sched
        if isinstance(st, _SeqState) and s is not None and st.owner is s and not s.task.done():
            s.release(st)

    async def aclose(self) -> None:
        s, self._sched = self._sched, None
        if s is not None and s.loop is asyncio.get_running_loop():
            await s.stop()
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, llm.close)
            self._thread.shutdown()


class _MultiContext:
    """A llama.cpp context with ``n_seq`` KV sequences of ``n_ctx`` cells each, on the model of
    ``llm`` (and its LoRA), plus the one batch every step fills. Model thread only."""

    def __init__(self, llm: Any, n_ctx: int, n_seq: int, verbose: bool):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * n_seq, n_seq, True
        params.n_batch = params.n_ubatch = N_BATCH
        self.lib = llama_cpp
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=verbose)  # closed with the model
        if llm._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
                raise RuntimeError("could not set the LoRA adapter on the multi-sequence context")
        self.batch = _internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1, verbose=verbose)
        llm._stack.callback(self.batch.close)
        self.n_ctx_seq = n_ctx  # each episode's budget; the unified cells (n_ctx * n_seq) are shared
        self.n_vocab = llm.n_vocab()

    def cut(self, slot: int, keep: int) -> None:
        """Drop sequence ``slot``'s KV from position ``keep`` on."""
        self.lib.llama_memory_seq_rm(self.ctx.memory, slot, keep, -1)

    def share(self, src: int, dst: int, n: int) -> None:
        """Make sequence ``dst`` hold exactly ``src``'s first ``n`` positions (the cells are
        shared, not copied: the KV is unified)."""
        self.lib.llama_memory_seq_rm(self.ctx.memory, dst, 0, -1)
        self.lib.llama_memory_seq_cp(self.ctx.memory, src, dst, 0, n)

    def decode(self, entries: list[tuple[int, list[int], int, bool]]) -> list[int]:
        """One ``llama_decode`` over (slot, tokens, first position, want logits) entries; returns the
        batch index of each wanted logits row."""
        b, n, rows = self.batch.batch, 0, []
        for slot, toks, start, want in entries:
            for i, t in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = t, start + i, 1, False
                b.seq_id[n][0] = slot
                n += 1
            if want:
                b.logits[n - 1] = True
                rows.append(n - 1)
        b.n_tokens = n
        rc = self.lib.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}" + (" (no KV cells left)" if rc == 1 else ""))
        return rows

    def logits(self, row: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self.ctx.ctx, row)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))


@dataclass(eq=False)
class _SeqState:
    owner: object  # the scheduler that gave out ``slot``
    key: int  # sampling key: the token at index i is drawn from rng(key, i)
    slot: int | None = None  # the llama.cpp seq_id
    cached: list[int] = field(default_factory=list)  # ids the slot's KV holds, in order
    used: int = 0  # scheduler step of the last use, to evict the idle slot used longest ago


@dataclass(eq=False)
class _Req:
    """One ``stream`` call: tokens go to ``out`` (ints, then None; or an exception)."""

    seq: Sequence
    params: SamplingParams
    st: _SeqState
    trace: list[np.ndarray] | None = None
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    todo: list[int] = field(default_factory=list)  # ids still to prefill
    tok: int | None = None  # decoding: the sampled token to feed next step
    left: int = 0  # tokens still to sample
    shared: bool = False  # _share_prefix has run for this request
    closed: bool = False


def _logprob(logits: np.ndarray, tok: int) -> float:
    """log-softmax of the raw logits (temperature 1) at ``tok``: the model's own log-prob of it."""
    m = float(logits.max())
    return float(logits[tok]) - m - float(np.log(np.exp(logits - m, dtype=np.float64).sum()))


def _rng(key: int, index: int) -> np.random.Generator:
    """The generator for the token at ``index``: counter-based, so a token sampled past a closed
    stream (and discarded) never shifts later draws."""
    return np.random.default_rng([key, index])


class _MultiSeq(DecodeLoop):
    """The sequences and the one decode loop of a ``n_seq > 1`` backend, bound to one event loop.
    Each step feeds every decoding episode's last token and then prefill chunks, up to N_BATCH
    tokens, through one ``llama_decode`` on the model thread."""

    label = "llama.cpp backend"

    def __init__(self, backend: LlamaCppBackend):
        super().__init__()
        self.b, self.mc = backend, backend._multi_ctx
        self.running: list[_Req] = []  # prefilling (todo) or decoding (tok), in arrival order
        self.slots: list[_SeqState | None] = [None] * backend.n_seq
        self.kept: list[list[int]] = [[] for _ in self.slots]  # what a free slot's KV still holds
        # KV edits (cut: slot, keep / share: src, dst, n) for the model thread to run, in order,
        # before the next decode; a new scheduler first clears what an earlier loop left
        self.ops: list[tuple[Any, ...]] = [("cut", s, 0) for s in range(len(self.slots))]
        self.start("splice-llama-decode")

    # -- the loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self.stopping:
                self._reap()
                self._admit()
                if self.running:
                    await self._step()
                else:
                    self.wake.clear()
                    await self.wake.wait()
        except BaseException as e:
            self.error = e
            self._fail(list(self.incoming) + self.running, e)
            raise

    def _fail(self, reqs: list[_Req], e: BaseException) -> None:
        for r in reqs:
            r.out.put_nowait(e)
            if r in self.running:
                self.running.remove(r)
            r.st.cached = []  # the KV of a failed step is unknown: the next stream re-prefills all
        self.incoming = deque(r for r in self.incoming if r not in reqs)

    def _fail_pending(self, e: BaseException) -> None:
        self._fail(list(self.incoming) + self.running, e)

    def _reap(self) -> None:
        """Drop closed requests from the batch; free the slots of released sequences."""
        for r in self.closing:
            if r in self.running:
                self.running.remove(r)
            if r in self.incoming:
                self.incoming.remove(r)
        self.closing.clear()
        busy = {r.st.slot for r in self.running}
        for st in self.releasing:
            if st.slot is not None and st.slot not in busy:  # released mid-stream: keep it (misuse)
                self.slots[st.slot], self.kept[st.slot] = None, st.cached
                st.slot, st.cached = None, []
        self.releasing.clear()

    def _admit(self) -> None:
        waiting: deque[_Req] = deque()
        for r in self.incoming:
            if r.st.slot is None and not self._take_slot(r.st):
                waiting.append(r)
                continue
            self._plan(r)
        self.incoming = waiting

    def _take_slot(self, st: _SeqState) -> bool:
        """A free sequence id, else the one of the idle episode (waiting on a tool, or never
        released) that ran longest ago; that episode re-prefills when it streams again. The new
        episode starts from what the slot's KV holds, so a shared prompt prefix is not prefilled
        again."""
        busy = {r.st.slot for r in self.running}
        free = [i for i, o in enumerate(self.slots) if o is None]
        idle = sorted((o.used, i) for i, o in enumerate(self.slots) if o is not None and i not in busy)
        if not free and not idle:
            return False
        slot = free[0] if free else idle[0][1]
        old = self.slots[slot]
        held = self.kept[slot] if old is None else old.cached
        if old is not None:
            old.slot, old.cached = None, []
        self.slots[slot], self.kept[slot], st.slot, st.cached = st, [], slot, held
        return True

    def _plan(self, r: _Req) -> None:
        """Keep the cached prefix the sequence still shares; prefill the rest."""
        ids = r.seq.ids
        r.left = min(r.params.max_tokens, self.b.context_size - len(ids))
        if r.left <= 0 or not ids:
            r.out.put_nowait(None)
            return
        keep = min(common_prefix(r.st.cached, ids), len(ids) - 1)
        del r.st.cached[keep:]
        self.ops.append(("cut", r.st.slot, keep))
        r.todo, r.st.used, r.shared = ids[keep:], self.steps, False
        r.seq.n_cached += keep
        r.seq.n_prefilled += len(r.todo)
        self.running.append(r)

    def _share_prefix(self, r: _Req) -> None:
        """Before ``r``'s first prefill chunk: start it from the longest prefix of its ids that any
        sequence's KV holds (another episode's system prompt and question template), when that beats
        its own. Decided this late so an episode that arrived with others finds their prompts fed."""
        ids, keep = r.seq.ids, len(r.st.cached)
        best, src = keep, None
        held = [(o.slot, o.cached) for o in self.slots if o is not None and o is not r.st]
        for slot, cached in held + [(i, c) for i, c in enumerate(self.kept) if self.slots[i] is None]:
            n = min(common_prefix(cached, ids), len(ids) - 1)
            if n > best:
                best, src = n, slot
        r.shared = True
        if src is None:
            return
        self.ops.append(("share", src, r.st.slot, best))
        r.st.cached, r.todo = ids[:best], ids[best:]
        r.seq.n_cached += best - keep
        r.seq.n_prefilled -= best - keep

    def _emit(self, r: _Req, tok: int, lp: float) -> bool:
        """Hand a sampled token (and its log-prob) to the stream; False when the request is finished."""
        r.out.put_nowait((tok, lp))
        r.left -= 1
        if tok in self.b.eos_ids or r.left <= 0:
            r.out.put_nowait(None)
            return False
        return True

    def _batch(self) -> list[tuple[_Req, list[int], bool]]:
        """This step's (request, tokens, want logits): one token of every decoding request, then a
        prefill chunk."""
        plan = [(r, [r.tok], True) for r in self.running if r.tok is not None]
        room = N_BATCH - len(plan)
        # one prefilling sequence per step: llama.cpp splits a batch over several sequences into
        # micro-batches with an equal count per sequence, so two prompts in one batch ran one token
        # of each per micro-batch (3 prompts of 170 tokens: 3 s instead of 0.3 s)
        r = next((r for r in self.running if r.todo), None)
        if r is not None and room > 0:
            if not r.shared:
                self._share_prefix(r)
            chunk = r.todo[:room]
            plan.append((r, chunk, len(chunk) == len(r.todo)))
        return sorted(plan, key=lambda e: e[0].st.slot)  # llama.cpp splits a batch whose seq ids are out of order

    async def _step(self) -> None:
        plan = self._batch()
        ops, self.ops = self.ops, []
        try:
            new = await self.loop.run_in_executor(self.b._thread, self._step_job, ops, plan)
        except Exception as e:  # noqa: BLE001 - this step's episodes get the error; the loop goes on
            self._fail([r for r, _, _ in plan], e)
            return
        self.steps += 1
        for (r, toks, _), tok in zip(plan, new):
            r.st.cached.extend(toks)
            r.st.used = self.steps
            if r.tok is not None:  # a decode row: its token is in the KV now
                r.tok = None
            else:
                r.todo = r.todo[len(toks):]
            if tok is None:
                continue
            tok, lp = tok
            if r.closed or not self._emit(r, tok, lp):
                if r in self.running:
                    self.running.remove(r)
            else:
                r.tok = tok

    def _step_job(self, ops: list[tuple[Any, ...]], plan: list[tuple[_Req, list[int], bool]]
                  ) -> list[tuple[int, float] | None]:
        """Model thread: edit the KV (drop stale tokens, share prefixes), run the batch, sample one
        token per finished row."""
        mc = self.mc
        for op, *args in ops:
            (mc.cut if op == "cut" else mc.share)(*args)
        rows = iter(mc.decode([(r.st.slot, toks, len(r.st.cached), want) for r, toks, want in plan]))
        self.b.n_evaluated += sum(len(toks) for _, toks, _ in plan)
        out: list[int | None] = []
        for r, toks, want in plan:
            if not want:
                out.append(None)
                continue
            logits = mc.logits(next(rows))
            if r.trace is not None:
                r.trace.append(logits.copy())
            tok = sample_token(logits, r.params, _rng(r.st.key, len(r.st.cached) + len(toks)))
            out.append((tok, _logprob(logits, tok)))
        return out
