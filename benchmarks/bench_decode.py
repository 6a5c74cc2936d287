"""Decode speed of the default model through splice vs raw llama-cpp-python, in one run.

Baseline: llama-cpp-python's ``Llama.eval`` + greedy argmax, called from the thread that loaded the
model, over the same prompt ids and the same number of tokens. Measured: ``Agent(model=MODEL,
tools=[]).run(...)`` (greedy), the whole episode including its prefill, timed on both sides the same
way. ``--model default`` (the default) is the shipped model: the base GGUF with the packaged LoRA
adapter folded in (the cached copy ``Agent`` loads, ``llama_cpp.merged``), which the raw side then
loads too; ``--raw-lora`` gives the raw side the base copy with the adapter applied by llama.cpp at
run time instead (what a plain llama-cpp-python user of the adapter gets); ``--model base``
compares the bare weights. Goal (issue: speed where users run it): splice >= 0.95x raw.

Each measurement is a fresh process holding one model, as a user's ``agent run`` does. Two models
run from two threads of one process each get a ggml (OpenMP) thread team, and the second runs slowly
while the first team lives (measured here: raw llama-cpp-python 104 tok/s from the main thread, 65
tok/s from a second thread of the same process, 101-105 again from the main thread once that thread
ended), which is what an earlier in-process version of this benchmark measured as splice's loss. The
two sides run in pairs, in alternating order (raw first, then splice first, ...), and the figure is
the median of the per-pair ratios: a busy neighbour on a shared host moves both sides of a pair alike.

    python benchmarks/bench_decode.py [--model default|base] [--raw-lora] [--tokens 200] [--pairs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "Write a long story about a dragon who learns to count."


def raw_tokens_per_s(model_name: str, raw_lora: bool, prompt: list[int], n: int) -> float:
    import numpy as np

    from agent.backends import default_model_path, shipped_adapter
    from agent.backends.llama_cpp import load_llama, merged, requantized

    model, adapter = requantized(default_model_path()), None  # the file Agent(model="base") loads
    if model_name == "default" and raw_lora:  # the adapter applied by llama.cpp at run time
        adapter = shipped_adapter()
    elif model_name == "default":  # the merged copy Agent(model="default") loads
        model = merged(default_model_path(), shipped_adapter())
    llm = load_llama(model_path=str(model), n_ctx=4096, n_threads=os.cpu_count(), n_batch=512,
                     flash_attn=True, lora_path=str(adapter) if adapter else None, verbose=False)
    try:
        llm.eval(prompt[:1])  # warm-up, as the splice side's first episode
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return n / (time.perf_counter() - t0)
    finally:
        llm.close()


async def splice_run(model_name: str, tokens: int) -> dict:
    from agent import Agent

    async with Agent(model=model_name, tools=[], max_new_tokens=tokens, temperature=0.0) as agent:
        await agent.run("Hi")  # warm-up (load, first prefill)
        t0 = time.perf_counter()
        traj = await agent.run(QUESTION)
        dt = time.perf_counter() - t0
    return {"tok_s": traj.n_generated / dt, "prompt": traj.token_ids[: traj.prompt_len], "n": traj.n_generated}


def child(side: str, model_name: str, raw_lora: bool, tokens: int, prompt_file: str) -> None:
    if side == "splice":
        res = asyncio.run(splice_run(model_name, tokens))
        Path(prompt_file).write_text(json.dumps({"prompt": res["prompt"], "n": res["n"]}))
        print(json.dumps({"tok_s": res["tok_s"]}))
    else:
        job = json.loads(Path(prompt_file).read_text())
        print(json.dumps({"tok_s": raw_tokens_per_s(model_name, raw_lora, job["prompt"], job["n"])}))


def measure(side: str, model_name: str, raw_lora: bool, tokens: int, prompt_file: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", side, "--model", model_name,
                          "--tokens", str(tokens), *(["--raw-lora"] if raw_lora else []),
                          "--prompt-file", prompt_file], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tok_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["default", "base"], default="default",
                    help="default: base GGUF + the shipped adapter on both sides; base: the bare weights")
    ap.add_argument("--raw-lora", action="store_true",
                    help="--model default: the raw side applies the adapter at run time (lora_path)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--child", choices=["splice", "raw"], help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.raw_lora, args.tokens, args.prompt_file)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = str(Path(tmp) / "prompt.json")
        measure("splice", args.model, args.raw_lora, args.tokens, prompt_file)  # fixes the prompt ids and token count for both sides
        n = json.loads(Path(prompt_file).read_text())
        ours, raw = [], []
        for i in range(args.pairs):
            order = ("raw", "splice") if i % 2 == 0 else ("splice", "raw")
            got = {side: measure(side, args.model, args.raw_lora, args.tokens, prompt_file) for side in order}
            ours.append(got["splice"])
            raw.append(got["raw"])
            print(f"  pair {i + 1}: raw {got['raw']:6.1f}  splice {got['splice']:6.1f} tok/s  "
                  f"{got['splice'] / got['raw']:.2f}x", file=sys.stderr, flush=True)
    ratios = [o / r for o, r in zip(ours, raw)]
    ratio = statistics.median(ratios)
    print(f"--model {args.model}{' --raw-lora' if args.raw_lora else ''}, {n['n']} greedy tokens after a {len(n['prompt'])}-token prompt, "
          f"{args.pairs} pairs of fresh processes (median):")
    print(f"  raw llama-cpp-python (loading thread)  {statistics.median(raw):7.1f} tok/s   1.00x")
    ours_label = f"Agent(model={args.model!r}, tools=[])"
    print(f"  {ours_label:38} {statistics.median(ours):7.1f} tok/s   {ratio:.2f}x   "
          f"(pair ratios {min(ratios):.2f}-{max(ratios):.2f}; goal >= 0.95x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "tokens": n["n"],
                                              "prompt_tokens": len(n["prompt"]), "raw_tok_s": raw,
                                              "splice_tok_s": ours, "pair_ratios": ratios,
                                              "median_ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
