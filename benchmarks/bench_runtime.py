"""Runtime cost of tool calls, measured against baselines in the same run.

1. Overhead per tool call (parse + dispatch + splice; model and tool excluded): a scripted model
   emits the same number of characters with and without 4 calls to a no-op tool.
2. llama.cpp on the embedded SmolLM2: an episode with 4 tool calls vs plain generation of the same
   number of tokens (goal <= 1.1), and the same episode on a naive loop that re-sends the whole
   context each turn (no KV reuse).

The real-model episode makes its calls on a fixed schedule (every K sampled tokens the call text is
forced in place of sampling), so the untrained default model makes exactly 4 calls per episode.

    python benchmarks/bench_runtime.py [--tokens 256] [--reps 3] [--out bench_runtime.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import Agent, SamplingParams, ScriptedBackend, Sequence, Trajectory  # noqa: E402
from agent.backends.base import Backend  # noqa: E402
from tools import ToolOutput, tool  # noqa: E402

RESULT = "x = 42, y = 17, x * y = 714"


@tool(name="noop")
def noop(arg: str) -> str:
    """Returns a fixed short result."""
    return RESULT


async def _noop_async(arg: str) -> ToolOutput:
    return ToolOutput(RESULT)


noop.call = _noop_async  # type: ignore[method-assign]  # no thread hop: measure the runtime alone


# -- 1. overhead per call, scripted model ---------------------------------------------------------
async def overhead_per_call(n: int = 2000) -> dict[str, float]:
    """Parse the call text, dispatch it (no-op tool), truncate, escape and encode the splice: the
    runtime's own work per call, timed directly on a live episode."""
    from agent.runtime import _Episode

    agent = Agent(ScriptedBackend([]), tools=[noop])
    call_text = "<noop_start>print(6 * 7)<noop_end>"
    ts = []
    async with contextlib.AsyncExitStack() as stack:
        ep = _Episode(agent, "q", [], 0)
        ep.stack = stack
        for _ in range(n):
            t0 = time.perf_counter()
            ep.parser.reset()
            ev = ep.parser.feed(call_text)[-1]
            await ep._dispatch(ev)
            ts.append(time.perf_counter() - t0)
            ep.traj.tool_calls.clear()
            ep.traj.segments.clear()
    ts.sort()
    return {"overhead_per_call_us_p50": ts[len(ts) // 2] * 1e6, "overhead_per_call_us_p99": ts[int(len(ts) * 0.99)] * 1e6}


# -- 2. real model --------------------------------------------------------------------------------
class ForcedCalls(Backend):
    """Wraps the llama.cpp backend: after every ``every`` sampled tokens, the call text is emitted in
    place of sampling. Each forced token is run through one decode step, as a sampled one would be,
    so the only extra work of the tool episode is the splice itself. ``banned`` keeps the model's own
    tags (the untrained model copies the calls it sees in its context) and EOS out of the samples, so
    every episode makes exactly the forced calls and runs to its token budget."""

    def __init__(self, inner: Backend, call_text: str, every: int, n_calls: int, banned: frozenset[int]):
        self.inner, self.every, self.n_calls, self.banned = inner, every, n_calls, banned
        self.call_ids = inner.encode(call_text)
        self.name, self.model_id, self.context_size = inner.name, inner.model_id, inner.context_size

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        return self.inner.encode(text, special=special)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.inner.chat_prompt(messages)

    @property
    def eos_ids(self) -> set[int]:
        return self.inner.eos_ids

    def new_sequence(self, seed: int | None = None) -> Sequence:
        s = self.inner.new_sequence(seed)
        s.calls_made = 0  # type: ignore[attr-defined]
        return s

    async def stream(self, seq: Sequence, append: list[int], params: SamplingParams) -> AsyncIterator[int]:
        force = seq.calls_made < self.n_calls  # type: ignore[attr-defined]
        params = dataclasses.replace(params, banned=params.banned | self.banned,
                                     max_tokens=min(params.max_tokens, self.every) if force else params.max_tokens)
        n = 0
        async for tok in self.inner.stream(seq, append, params):
            n += 1
            yield tok
        if force and n == self.every:
            seq.calls_made += 1  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            for tok in self.call_ids:  # each forced token costs one decode step, as a sampled one would,
                # on the model's own thread (``_prefill`` keeps the cached prefix, evaluates one token)
                await loop.run_in_executor(self.inner._thread, self.inner._prefill, seq.ids + [tok])  # type: ignore[attr-defined]
                seq.ids.append(tok)
                yield tok


def banned_ids(backend: Backend) -> frozenset[int]:
    """EOS and every token whose text holds ``<`` (a tag's first character)."""
    n = backend.llm.n_vocab()  # type: ignore[attr-defined]
    return frozenset(i for i in range(n) if "<" in backend.decode([i])) | frozenset(backend.eos_ids)


class NoReuse(Backend):
    """The naive loop: every turn re-encodes the whole context (no KV prefix reuse)."""

    def __init__(self, inner):  # noqa: ANN001
        self.inner = inner

    def __getattr__(self, name):  # noqa: ANN001
        return getattr(self.inner, name)

    def encode(self, text, *, special=False):  # noqa: ANN001
        return self.inner.encode(text, special=special)

    def decode(self, ids):  # noqa: ANN001
        return self.inner.decode(ids)

    def chat_prompt(self, messages):  # noqa: ANN001
        return self.inner.chat_prompt(messages)

    @property
    def eos_ids(self):  # noqa: ANN201
        return self.inner.eos_ids

    async def stream(self, seq, append, params):  # noqa: ANN001
        self.inner.llm.reset()  # drop the whole KV cache: the next prefill redoes the context
        async for tok in self.inner.stream(seq, append, params):
            yield tok


async def plain_generation(backend: Backend, prompt: list[int], n: int, banned: frozenset[int]) -> float:
    """Seconds to prefill ``prompt`` and sample ``n`` tokens (the same banned ids: no EOS)."""
    backend.llm.reset()  # type: ignore[attr-defined]
    seq = backend.new_sequence()
    t0 = time.perf_counter()
    k = 0
    async for _ in backend.stream(seq, prompt, SamplingParams(max_tokens=n, banned=banned)):
        k += 1
    assert k == n, (k, n)
    return time.perf_counter() - t0


async def tool_episode(backend: Backend, n_tokens: int, n_calls: int, banned: frozenset[int]) -> tuple[float, Trajectory]:
    every = n_tokens // (n_calls + 1)
    forced = ForcedCalls(backend, "<noop_start>1<noop_end>", every, n_calls, banned)
    agent = Agent(forced, tools=[noop], max_new_tokens=n_tokens, max_tool_calls=n_calls + 1)
    backend.llm.reset()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    t = await agent.run("Write a short story about a lighthouse keeper who counts ships.")
    return time.perf_counter() - t0, t


async def prefill_cost(backend: Backend, prompt: list[int], splice: list[int], reps: int) -> float:
    """Median seconds to prefill ``splice`` after a cached ``prompt``: what each call must pay."""
    loop, ts = asyncio.get_running_loop(), []
    for _ in range(reps):
        await loop.run_in_executor(backend._thread, backend._prefill, prompt)  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        await loop.run_in_executor(backend._thread, backend._prefill, prompt + splice)  # type: ignore[attr-defined]
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


async def real_model(n_tokens: int, reps: int, weights: str) -> dict[str, float]:
    from agent.backends import default_model_path
    from agent.backends.llama_cpp import LlamaCppBackend, requantized

    path = requantized(default_model_path()) if weights == "q8_0" else default_model_path()
    llama = LlamaCppBackend(path, n_ctx=2048)
    agent = Agent(llama, tools=[noop])
    prompt = llama.encode(llama.chat_prompt(agent.messages(
        "Write a short story about a lighthouse keeper who counts ships.")), special=True)
    banned = banned_ids(llama)
    await plain_generation(llama, prompt, 16, banned)  # warm-up
    rows: dict[str, list[float]] = {"plain": [], "splice": [], "naive": []}
    t = None
    for _ in range(reps):
        dt, t = await tool_episode(llama, n_tokens, 4, banned)
        rows["splice"].append(dt)
        rows["plain"].append(await plain_generation(llama, prompt, t.n_generated, banned))
        rows["naive"].append((await tool_episode(NoReuse(llama), n_tokens, 4, banned))[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    splices = [s.token_ids for s in t.segments if s.source == "result"]
    per_call = [await prefill_cost(llama, prompt, ids, 5) for ids in splices]
    await llama.aclose()
    return {"tokens": t.n_generated, "tool_calls": len(t.tool_calls), "plain_s": med["plain"],
            "splice_s": med["splice"], "naive_s": med["naive"], "ratio_splice": med["splice"] / med["plain"],
            "ratio_naive": med["naive"] / med["plain"], "splice_tokens": [len(ids) for ids in splices],
            "splice_prefill_s": sum(per_call),
            "ratio_plain_plus_prefill": (med["plain"] + sum(per_call)) / med["plain"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--weights", default="q8_0", help="q8_0 (what --model default runs) | as-is (the Q4_1 file)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    res: dict[str, dict[str, float]] = {"overhead": asyncio.run(overhead_per_call())}
    o = res["overhead"]
    print(f"runtime overhead per tool call (parse + dispatch + splice, no-op tool): "
          f"p50 {o['overhead_per_call_us_p50']:.0f} us, p99 {o['overhead_per_call_us_p99']:.0f} us")
    if not a.skip_model:
        r = res["llama_cpp"] = asyncio.run(real_model(a.tokens, a.reps, a.weights))
        print(f"llama.cpp SmolLM2-135M ({a.weights}), {r['tokens']:.0f} generated tokens, {r['tool_calls']:.0f} tool calls, "
              f"median of {a.reps}:")
        print(f"  plain generation          {r['plain_s']:.2f} s   1.00x")
        print(f"  splice (KV reuse)         {r['splice_s']:.2f} s   {r['ratio_splice']:.2f}x   (goal <= 1.10)")
        print(f"  naive loop (re-send all)  {r['naive_s']:.2f} s   {r['ratio_naive']:.2f}x")
        print(f"  where the extra goes: the {len(r['splice_tokens'])} splices are {r['splice_tokens']} tokens; "
              f"prefilling them alone takes {r['splice_prefill_s']:.2f} s, so plain + that prefill = "
              f"{r['ratio_plain_plus_prefill']:.2f}x; the rest ({r['ratio_splice'] - r['ratio_plain_plus_prefill']:+.2f}x) "
              f"is the runtime, the tool and the segment hand-offs")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
