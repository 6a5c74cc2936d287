"""Start-up cost of the shipped tool-use adapter: loading the default model with and without it.

Baseline: ``LlamaCppBackend`` on the file ``--model base`` loads (the cached Q8_0 copy of the Q4_1
GGUF; ``--weights as-is`` for the Q4_1 file). Measured: what ``--model default`` loads, the cached
copy with the adapter merged in (``llama_cpp.merged``), and for comparison the LoRA adapter GGUF
applied at load by llama.cpp (``--weights as-is``, and what the default did before the merge); the
first token after a short prompt for each. Goal (issue: the default model uses its tools): applying
the adapter adds at most 1 s to ``agent run``. Also printed: the one-time costs, on a machine's first
run (into a fresh cache folder), of the merged copy (``--model default``, made straight from the Q4_1
file) and of the Q8_0 copy (``--model base``).

    python benchmarks/bench_startup.py [--reps 5] [--adapter PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends import SamplingParams, default_model_path, shipped_adapter  # noqa: E402
from agent.backends.llama_cpp import LlamaCppBackend, merged, requantized  # noqa: E402


async def load_and_first_token(model: Path, adapter: Path | None) -> tuple[float, float]:
    t0 = time.perf_counter()
    b = LlamaCppBackend(model, adapter=adapter)
    loaded = time.perf_counter() - t0
    try:
        prompt = b.encode(b.chat_prompt([{"role": "user", "content": "Hi"}]), special=True)
        async for _ in b.stream(b.new_sequence(0), prompt, SamplingParams(max_tokens=1)):
            pass
        return loaded, time.perf_counter() - t0
    finally:
        await b.aclose()


def time_first_copies(adapter: Path) -> tuple[float, float]:
    """Seconds to make the Q8_0 copy, and the merged copy, each into an empty cache (a machine's first run)."""
    saved = os.environ.get("SPLICE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPLICE_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            merged(default_model_path(), adapter)
            t1 = time.perf_counter()
            requantized(default_model_path())
            return time.perf_counter() - t1, t1 - t0
        finally:
            if saved is None:
                del os.environ["SPLICE_CACHE"]
            else:
                os.environ["SPLICE_CACHE"] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--adapter", default="", help="adapter GGUF (default: the shipped one)")
    ap.add_argument("--weights", default="q8_0", help="q8_0 (what --model default runs) | as-is")
    args = ap.parse_args()
    model = requantized(default_model_path()) if args.weights == "q8_0" else default_model_path()
    adapter = Path(args.adapter) if args.adapter else shipped_adapter()
    if adapter is None:
        sys.exit("no adapter: this build ships none; give --adapter PATH")
    first_copy, first_merge = time_first_copies(adapter)
    with_adapter = merged(default_model_path(), adapter, "q8_0") if args.weights == "q8_0" else None
    loads = {"base": (model, None), "run-time adapter": (model, adapter)}
    if with_adapter is not None:
        loads["merged (default)"] = (with_adapter, None)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in loads}
    for _ in range(args.reps):  # interleaved, so machine noise hits all alike
        for k, (weights, lora) in loads.items():
            runs[k].append(asyncio.run(load_and_first_token(weights, lora)))
    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in runs.items()}
    print(f"default model load ({model.name}), median of {args.reps} ({adapter.name}, "
          f"{adapter.stat().st_size / 1e6:.1f} MB):")
    for k, (load, first) in med.items():
        print(f"  {k:17s} load {load * 1000:7.1f} ms   first token {first * 1000:7.1f} ms")
    for k in list(loads)[1:]:
        extra = med[k][1] - med["base"][1]
        print(f"  {k} adds {extra * 1000:.1f} ms to the first token (goal <= 1000 ms)")
    print(f"  a machine's first run of --model default also makes the merged copy once: {first_merge * 1000:.0f} ms")
    print(f"  (of --model base: the Q8_0 copy once: {first_copy * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
