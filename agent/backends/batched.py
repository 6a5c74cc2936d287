"""Batched transformers backend: concurrent episodes share one decode loop (continuous batching).

Every ``stream`` call becomes a request to one scheduler task owned by the backend. The scheduler
gives each sequence a cache slot, prefills the ids the slot does not hold (in chunks, one chunk per
loop turn, so a long prompt never stalls the others for long), then decodes one token for all
decoding slots per step. When the runtime closes a stream (the model wrote a tool call) the sequence
leaves the batch at the next step but keeps its slot; when it streams again it rejoins with only
the spliced tokens prefilled. New sequences take slots as they free up.

The forward runs on the backend's one model thread (``ModelThread``), one step at a time, so the event loop
stays free for tools and consumers. Per step the Python work is a handful of numpy ops plus one
queue put per decoding sequence. Greedy rows are an on-device argmax (the same tokens as the
single-sequence backend); sampled rows use the same ``sample_token`` with a generator keyed by
(seed, token index), so a seeded episode samples the same tokens whatever shared its batch and
however far the scheduler decoded past a closed stream. Design notes and numbers: docs/speed.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.backends._static_cache import StaticLlamaRunner, unsupported_reason
from agent.backends.base import ModelThread, SamplingParams, Sequence, common_prefix
from agent.backends.sampling import sample_token
from agent.backends.scheduling import DecodeLoop
from agent.backends.transformers import TransformersBackend, cache_kwarg
from agent.errors import ModelError

__all__ = ["BatchedTransformersBackend"]

log = logging.getLogger("splice.backends.batched")


@dataclass(eq=False)
class _SeqState:
    owner: object  # the scheduler that gave out ``slot``
    key: int  # sampling key: the token at index i is drawn from rng(key, i)
    slot: int | None = None
    cached: list[int] = field(default_factory=list)  # ids the slot's cache holds, in order


@dataclass(eq=False)
class _Req:
    """One ``stream`` call: tokens go to ``out`` ((id, log-prob) pairs, then None; or an exception)."""

    seq: Sequence
    params: SamplingParams
    st: _SeqState
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    todo: list[int] = field(default_factory=list)  # ids still to prefill
    left: int = 0  # tokens still to sample
    closed: bool = False


def _rng(key: int, index: int) -> np.random.Generator:
    """The generator for the token at ``index`` of a sequence: a counter-based draw, so tokens the
    scheduler samples past a closed stream (and discards) never shift later draws."""
    return np.random.default_rng([key, index])


class _HFRunner:
    """Fallback for architectures the lean forward does not cover: HF's own forward, one slot at a
    time, each with a ``DynamicCache``. Same scheduling and results, no batched math."""

    def __init__(self, model: Any, n_slots: int, max_len: int):
        self.model, self.n_slots, self.max_len = model, n_slots, max_len
        self.device = next(model.parameters()).device
        self.caches: list[Any] = [None] * n_slots
        self.cache_bytes_per_slot = 0  # grows with use; not preallocated
        self.cache_kw = cache_kwarg(model)

    def prefill(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        from transformers import DynamicCache

        cache = self.caches[slot]
        if start == 0 or cache is None:
            cache = DynamicCache()
        elif cache.get_seq_length() > start:
            cache.crop(start - cache.get_seq_length())  # negative: tokens to drop (transformers 4 and 5)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True,
                         **{self.cache_kw: cache})  # filled in place
        self.caches[slot] = cache
        return out.logits[0, -1].float()

    def decode(self, tok: np.ndarray, pos: np.ndarray, active: np.ndarray) -> torch.Tensor:
        rows = [self.prefill(s, [int(tok[s])], int(pos[s])) if active[s] else None for s in range(len(tok))]
        zero = torch.zeros_like(next(r for r in rows if r is not None))
        return torch.stack([zero if r is None else r for r in rows])


class _Scheduler(DecodeLoop):
    """The slots and the one decode loop of a backend, bound to one event loop."""

    label = "batched backend"

    def __init__(self, runner: Any, eos: set[int], prefill_chunk: int, thread: ModelThread):
        super().__init__()
        self.runner, self.eos, self.chunk, self.thread = runner, eos, prefill_chunk, thread
        self.prefilling: deque[_Req] = deque()
        self.decoding: dict[int, _Req] = {}  # slot -> request
        self.free = list(range(runner.n_slots))  # a heap: lowest slots first keep the batch short
        n = runner.n_slots
        self.tok, self.pos = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.active = np.zeros(n, bool)
        self.start("splice-batched-decode")

    # -- the loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self.stopping:
                self._reap()
                self._admit()
                if self.prefilling:
                    await self._prefill_chunk()
                if self.decoding:
                    await self._decode_step()
                elif not self.prefilling:
                    self.wake.clear()
                    await self.wake.wait()
        except BaseException as e:
            self.error = e
            self._fail_pending(e)
            raise

    def _fail_pending(self, e: BaseException) -> None:
        for r in [*self.incoming, *self.prefilling, *self.decoding.values()]:
            r.out.put_nowait(e)
        self.incoming.clear()
        self.prefilling.clear()
        self.decoding.clear()

    def _reap(self) -> None:
        """Drop closed requests from the batch; free the slots of released sequences."""
        for r in self.closing:
            if r.st.slot is not None and self.decoding.get(r.st.slot) is r:
                self._leave(r.st.slot)
            for q in (self.prefilling, self.incoming):
                if r in q:
                    q.remove(r)
        self.closing.clear()
        busy = {r.st.slot for r in self.prefilling} | set(self.decoding)
        for st in self.releasing:
            if st.slot is not None and st.slot not in busy:  # released mid-stream: keep it (misuse)
                heapq.heappush(self.free, st.slot)
                st.slot, st.cached = None, []
        self.releasing.clear()

    def _admit(self) -> None:
        waiting: deque[_Req] = deque()
        for r in self.incoming:
            if r.st.slot is None:
                if not self.free:
                    waiting.append(r)
                    continue
                r.st.slot, r.st.cached = heapq.heappop(self.free), []
            self._plan(r)
        self.incoming = waiting

    def _plan(self, r: _Req) -> None:
        """Keep the cached prefix the sequence still shares; prefill the rest."""
        ids = r.seq.ids
        r.left = min(r.params.max_tokens, self.runner.max_len - len(ids))
        if r.left <= 0 or not ids:
            r.out.put_nowait(None)
            return
        keep = min(common_prefix(r.st.cached, ids), len(ids) - 1)
        del r.st.cached[keep:]
        r.todo = ids[keep:]
        r.seq.n_cached += keep
        r.seq.n_prefilled += len(r.todo)
        self.prefilling.append(r)

    def _emit(self, r: _Req, tok: int, logprob: float) -> bool:
        """Hand a sampled token to the stream; False when the request is finished."""
        r.out.put_nowait((tok, logprob))
        r.left -= 1
        if tok in self.eos or r.left <= 0:
            r.out.put_nowait(None)
            return False
        return True

    def _join(self, r: _Req, tok: int) -> None:
        s = r.st.slot
        assert s is not None
        self.tok[s], self.pos[s], self.active[s] = tok, len(r.st.cached), True
        self.decoding[s] = r

    def _leave(self, slot: int) -> None:
        self.active[slot] = False
        del self.decoding[slot]

    async def _prefill_chunk(self) -> None:
        r = self.prefilling[0]
        chunk, last = r.todo[: self.chunk], len(r.todo) <= self.chunk
        assert r.st.slot is not None
        got = await self.thread.run(self._prefill_job, r, chunk, len(r.st.cached), last)
        r.st.cached.extend(chunk)
        r.todo = r.todo[len(chunk):]
        if not last:
            return
        self.prefilling.popleft()
        if got is not None and not r.closed and self._emit(r, *got):
            self._join(r, got[0])

    def _prefill_job(self, r: _Req, chunk: list[int], start: int, last: bool) -> tuple[int, float] | None:
        with torch.inference_mode():
            logits = self.runner.prefill(r.st.slot, chunk, start)
            if not last:
                return None
            if r.params.greedy:
                tok = int(logits.argmax())
            else:
                tok = sample_token(logits.cpu().numpy(), r.params, _rng(r.st.key, start + len(chunk)))
            return tok, float(torch.log_softmax(logits.float(), -1)[tok])

    async def _decode_step(self) -> None:
        n = max(self.decoding) + 1
        tok, pos, act = self.tok[:n].copy(), self.pos[:n].copy(), self.active[:n].copy()
        samplers = [(s, r.params, _rng(r.st.key, int(pos[s]) + 1))
                    for s, r in self.decoding.items() if not r.params.greedy]
        new, lps = await self.thread.run(self._decode_job, tok, pos, act, samplers)
        self.steps += 1
        for s, r in list(self.decoding.items()):
            r.st.cached.append(int(tok[s]))  # fed this step: now in the cache
            self.pos[s] += 1
            self.tok[s] = new[s]
            if r.closed or not self._emit(r, new[s], lps[s]):
                self._leave(s)

    def _decode_job(self, tok: np.ndarray, pos: np.ndarray, act: np.ndarray,
                    samplers: list[tuple[int, SamplingParams, np.random.Generator]]) -> tuple[list[int], list[float]]:
        """The next id of every row and its log-prob (log-softmax of the raw logits)."""
        with torch.inference_mode():
            logits = self.runner.decode(tok, pos, act)
            ids = logits.argmax(-1).tolist()
            for s, params, rng in samplers:
                ids[s] = sample_token(logits[s].cpu().numpy(), params, rng)
            index = torch.tensor(ids, device=logits.device).unsqueeze(-1)
            lps = torch.log_softmax(logits.float(), -1).gather(-1, index).squeeze(-1).tolist()
        return ids, lps


class BatchedTransformersBackend(TransformersBackend):
    """``TransformersBackend`` for many concurrent episodes: one decode loop, ``max_batch`` slots of
    ``max_len`` tokens. Use it as ``async with``; ``aclose()`` stops the loop."""

    name = "transformers-batched"

    def __init__(self, path: str | Path | None = None, device: str = "auto", *, model: Any = None,
                 tokenizer: Any = None, dtype: str = "auto", max_batch: int = 8, max_len: int = 2048,
                 prefill_chunk: int = 256, cuda_graphs: bool = True, lean: bool = True):
        if max_batch < 1 or max_len < 2 or prefill_chunk < 1:
            raise ValueError("max_batch >= 1, max_len >= 2 and prefill_chunk >= 1 are required")
        super().__init__(path, device, model=model, tokenizer=tokenizer, dtype=dtype)
        max_len = min(max_len, self.context_size)
        reason = unsupported_reason(self.model) if lean else "lean forward disabled"
        if reason is None:
            self.runner: Any = StaticLlamaRunner(self.model, max_batch, max_len, cuda_graphs=cuda_graphs)
        else:
            log.info("batched backend uses the HF forward per slot: %s", reason)
            self.runner = _HFRunner(self.model, max_batch, max_len)
        self.context_size = max_len
        self.prefill_chunk = prefill_chunk
        self._sched: _Scheduler | None = None

    @property
    def lean(self) -> bool:
        return isinstance(self.runner, StaticLlamaRunner)

    @property
    def decode_steps(self) -> int:
        return self._sched.steps if self._sched else 0

    def _scheduler(self) -> _Scheduler:
        loop = asyncio.get_running_loop()
        s = self._sched
        if s is not None and s.loop is loop and not s.task.done():
            return s
        if s is not None and s.loop is not loop and s.loop.is_running():
            raise ModelError("a BatchedTransformersBackend can serve one event loop at a time")
        if self.runner is None:
            raise ModelError("the batched backend is closed")
        self._sched = _Scheduler(self.runner, self._eos, self.prefill_chunk, self._thread)
        return self._sched

    async def __aenter__(self) -> BatchedTransformersBackend:
        self._scheduler()
        return self

    def new_sequence(self, seed: int | None = None) -> Sequence:
        return Sequence(seed=seed)

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        seq.ids.extend(append)
        sched = self._scheduler()
        st = seq.state
        if not isinstance(st, _SeqState) or st.owner is not sched:
            key = seq.seed if seq.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
            st = seq.state = _SeqState(owner=sched, key=key)
        req = _Req(seq, params, st)
        async with contextlib.aclosing(sched.stream(req, "batched decode")) as toks:
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
        self.runner = None
        await super().aclose()
