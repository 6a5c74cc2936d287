"""llama.cpp step speed of the default model's two weight files: the shipped Q4_1 GGUF vs the Q8_0
copy splice runs it from (``--weights auto``), one sequence and ``--n-seq`` sequences per step.

Measured per file: ``llama_decode`` of 1 token for 1 sequence (single-episode decode) and of 1 token
for each of N sequences (what ``--n-seq N`` runs per step), each sequence after a ``--prompt``-token
context, through the backend's own multi-sequence context (``_MultiContext``). Each file is a fresh
process; files alternate in pairs and the figures are medians of per-pair ratios (Q8_0 / Q4_1).

    python benchmarks/bench_weights.py [--pairs 6] [--n-seq 8] [--prompt 300] [--steps 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(fmt: str, n_seq: int, prompt: int, steps: int) -> dict[str, float]:
    import numpy as np

    from agent.backends import default_model_path
    from agent.backends.llama_cpp import _MultiContext, load_llama, requantized

    path = requantized(default_model_path()) if fmt == "q8_0" else default_model_path()
    llm = load_llama(model_path=str(path), n_ctx=64, n_threads=os.cpu_count(), n_batch=512, flash_attn=True,
                     verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()

    def tok_s(n: int) -> float:
        mc = _MultiContext(llm, 2048, n, False)
        for s in range(n):
            mc.decode([(s, rng.integers(100, vocab, prompt).tolist(), 0, True)])
        t0 = time.perf_counter()
        for k in range(steps):
            mc.decode([(s, [int(rng.integers(100, vocab))], prompt + k, True) for s in range(n)])
        return n * steps / (time.perf_counter() - t0)

    try:
        return {"one": tok_s(1), "many": tok_s(n_seq)}
    finally:
        llm.close()


def measure(fmt: str, a: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", fmt, "--n-seq", str(a.n_seq), "--prompt",
                          str(a.prompt), "--steps", str(a.steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--n-seq", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=300, help="context tokens per sequence before timing")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--child", choices=["q4_1", "q8_0"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.n_seq, a.prompt, a.steps)))
        return
    runs: dict[str, list[dict[str, float]]] = {"q4_1": [], "q8_0": []}
    for i in range(a.pairs):
        for fmt in ("q4_1", "q8_0") if i % 2 == 0 else ("q8_0", "q4_1"):
            runs[fmt].append(measure(fmt, a))
        print(f"  pair {i + 1}: " + "  ".join(f"{f} {r[-1]['one']:6.1f} / {r[-1]['many']:6.1f} tok/s"
                                             for f, r in runs.items()), file=sys.stderr, flush=True)
    fig: dict[str, object] = {}
    print(f"llama_decode tok/s, 1 sequence x 1 token and {a.n_seq} sequences x 1 token per step, after "
          f"{a.prompt} tokens each; {a.pairs} pairs of fresh processes (medians):")
    for fmt, rs in runs.items():
        one, many = statistics.median(r["one"] for r in rs), statistics.median(r["many"] for r in rs)
        batch = statistics.median(r["many"] / r["one"] for r in rs)
        fig[fmt] = {"one": one, "many": many, "batch_gain": batch}
        print(f"  {fmt}  1 seq {one:6.1f}   {a.n_seq} seq {many:6.1f}   batching gains {batch:.2f}x")
    for k, what in (("one", "1 sequence"), ("many", f"{a.n_seq} sequences")):
        r = [b[k] / q[k] for q, b in zip(runs["q4_1"], runs["q8_0"])]
        fig[f"q8_0_over_q4_1_{k}"] = statistics.median(r)
        print(f"  Q8_0 / Q4_1, {what}: {statistics.median(r):.2f}x (pairs {min(r):.2f}-{max(r):.2f})")
    if a.out:
        Path(a.out).write_text(json.dumps({"runs": runs, **fig}, indent=1))


if __name__ == "__main__":
    main()
