"""Decode speed of the default model through splice vs raw llama-cpp-python, in one run.

Baseline: llama-cpp-python's ``Llama.eval`` + greedy argmax, called from the thread that loaded the
model, over the same prompt ids and the same number of tokens. Measured: ``Agent(model="base",
tools=[]).run(...)`` (greedy), the whole episode including its prefill, timed on both sides the same
way. Goal (issue: speed where users run it): splice >= 0.95x raw.

    python benchmarks/bench_decode.py [--tokens 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import Agent  # noqa: E402
from agent.backends import default_model_path  # noqa: E402

QUESTION = "Write a long story about a dragon who learns to count."


def raw_tokens_per_s(prompt: list[int], n: int) -> float:
    from agent.backends.llama_cpp import load_llama

    llm = load_llama(model_path=str(default_model_path()), n_ctx=4096, n_threads=os.cpu_count(), n_batch=512,
                     flash_attn=True, verbose=False)
    try:
        t0 = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return n / (time.perf_counter() - t0)
    finally:
        llm.close()


async def splice_run(tokens: int) -> tuple[float, list[int], int]:
    async with Agent(model="base", tools=[], max_new_tokens=tokens, temperature=0.0) as agent:
        await agent.run("Hi")  # warm-up (load, first prefill)
        t0 = time.perf_counter()
        traj = await agent.run(QUESTION)
        dt = time.perf_counter() - t0
    prompt = traj.token_ids[: traj.prompt_len]
    return traj.n_generated / dt, prompt, traj.n_generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    ours, raw = [], []
    for _ in range(args.reps):  # interleaved, so machine noise hits both alike
        rate, prompt, n = asyncio.run(splice_run(args.tokens))
        ours.append(rate)
        raw.append(raw_tokens_per_s(prompt, n))
    o, r = statistics.median(ours), statistics.median(raw)
    print(f"default model, {n} greedy tokens after a {len(prompt)}-token prompt, median of {args.reps}:")
    print(f"  raw llama-cpp-python (loading thread)  {r:7.1f} tok/s   1.00x")
    print(f"  Agent(model='base', tools=[])          {o:7.1f} tok/s   {o / r:.2f}x   (goal >= 0.95x)")


if __name__ == "__main__":
    main()
