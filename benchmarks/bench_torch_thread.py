"""Decode speed of the torch backends with every forward on their one model thread vs the same
backend calling its forwards through ``asyncio.to_thread`` (what they did before), in one run.

torch (like ggml) keeps an OpenMP thread team per calling thread. ``asyncio.to_thread`` hands each
step to whichever of asyncio's worker threads is free, and consecutive forwards hop between two or
more of them, each with its own team competing for the cores. ``ModelThread`` (agent/backends/base.py)
runs every forward on one thread for the backend's life. Baseline: the same forwards from the
main thread of a process that runs nothing else (HF ``model(...)`` with a ``DynamicCache``, greedy).

Each measurement is a fresh process (one thread team per process, as a user's run has); the sides
run in rounds of alternating order and each figure is the median over rounds.

    python benchmarks/bench_torch_thread.py [--seqs 8] [--tokens 64] [--rounds 5]

``--seqs 1`` measures ``TransformersBackend`` (one sequence per forward), ``--seqs N`` the batched
backend with N episodes decoding together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a long story about a dragon who learns to count."


def _model():
    from agent.backends import default_model_path
    from agent.backends.transformers import load_hf

    return load_hf(default_model_path(), "cpu")


def raw(seqs: int, tokens: int) -> float:
    import torch
    from transformers import DynamicCache

    model, tok = _model()
    ids = tok(PROMPT, return_tensors="pt").input_ids.repeat(seqs, 1)

    def run() -> None:
        cache, inp = DynamicCache(), ids
        with torch.inference_mode():
            for _ in range(tokens):
                out = model(input_ids=inp, use_cache=True, past_key_values=cache)
                inp = out.logits[:, -1:].argmax(-1)

    run()  # warm-up
    t0 = time.perf_counter()
    run()
    return seqs * tokens / (time.perf_counter() - t0)


async def backend(seqs: int, tokens: int, hop: bool) -> float:
    from agent.backends.base import SamplingParams
    from agent.backends.batched import BatchedTransformersBackend
    from agent.backends.transformers import TransformersBackend

    model, tok = _model()
    b = (TransformersBackend(model=model, tokenizer=tok) if seqs == 1 else
         BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=seqs, max_len=512, cuda_graphs=False))
    if hop:  # the old way: each forward on whichever asyncio worker thread is free
        async def to_thread(fn, *args):
            return await asyncio.to_thread(fn, *args)
        b._thread.run = to_thread
    prompt = tok(PROMPT).input_ids
    params = SamplingParams(max_tokens=tokens)

    async def one() -> int:
        seq = b.new_sequence()
        async with contextlib.aclosing(b.stream(seq, list(prompt), params)) as it:
            n = len([t async for t in it])
        await b.release(seq)
        return n

    try:
        await asyncio.gather(*(one() for _ in range(seqs)))  # warm-up
        t0 = time.perf_counter()
        n = sum(await asyncio.gather(*(one() for _ in range(seqs))))
        return n / (time.perf_counter() - t0)
    finally:
        await b.aclose()


def child(side: str, seqs: int, tokens: int) -> float:
    if side == "raw":
        return raw(seqs, tokens)
    return asyncio.run(backend(seqs, tokens, hop=side == "to_thread"))


def measure(side: str, a: argparse.Namespace) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", side, "--seqs", str(a.seqs), "--tokens",
                          str(a.tokens)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--child", choices=["raw", "model_thread", "to_thread"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.seqs, a.tokens)))
        return
    sides = ["raw", "model_thread", "to_thread"]
    got: dict[str, list[float]] = {s: [] for s in sides}
    for i in range(a.rounds):
        for s in sides[i % 3:] + sides[: i % 3]:
            got[s].append(measure(s, a))
        print(f"  round {i + 1}: " + "  ".join(f"{s} {got[s][-1]:.1f}" for s in sides) + " tok/s",
              file=sys.stderr, flush=True)
    med = {s: statistics.median(v) for s, v in got.items()}
    name = "TransformersBackend" if a.seqs == 1 else f"BatchedTransformersBackend, {a.seqs} episodes"
    print(f"{name}, SmolLM2-135M fp32 on CPU, {a.tokens} greedy tokens each, median of {a.rounds} rounds:")
    print(f"  raw HF forward, main thread          {med['raw']:7.1f} tok/s   1.00x")
    print(f"  backend, one model thread (now)      {med['model_thread']:7.1f} tok/s   "
          f"{med['model_thread'] / med['raw']:.2f}x")
    print(f"  backend, asyncio.to_thread (before)  {med['to_thread']:7.1f} tok/s   "
          f"{med['to_thread'] / med['raw']:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps({"seqs": a.seqs, "tokens": a.tokens, **got}, indent=1))


if __name__ == "__main__":
    main()
