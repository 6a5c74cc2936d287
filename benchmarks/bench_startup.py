"""Start-up cost of the shipped tool-use adapter: loading the default model with and without it.

Baseline: ``LlamaCppBackend`` on the file ``--model base`` loads (the cached Q8_0 copy of the Q4_1
GGUF; ``--weights as-is`` for the Q4_1 file). Measured: the same plus the LoRA adapter GGUF applied at
load (``--model default``), and the first token after a short prompt for both. Goal (issue: the
default model uses its tools): applying the adapter adds at most 1 s to ``agent run``. Also printed:
the one-time cost of making the Q8_0 copy on a machine's first run (into a fresh cache folder).

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
from agent.backends.llama_cpp import LlamaCppBackend, requantized  # noqa: E402


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


def time_first_copy() -> float:
    """Seconds to make the Q8_0 copy into an empty cache, as on a machine's first run."""
    saved = os.environ.get("SPLICE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPLICE_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            requantized(default_model_path())
            return time.perf_counter() - t0
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
    first_copy = time_first_copy()
    model = requantized(default_model_path()) if args.weights == "q8_0" else default_model_path()
    adapter = Path(args.adapter) if args.adapter else shipped_adapter()
    if adapter is None:
        sys.exit("no adapter: this build ships none; give --adapter PATH")
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "adapter": []}
    for _ in range(args.reps):  # interleaved, so machine noise hits both alike
        runs["base"].append(asyncio.run(load_and_first_token(model, None)))
        runs["adapter"].append(asyncio.run(load_and_first_token(model, adapter)))
    med = {k: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for k, v in runs.items()}
    print(f"default model load ({model.name}), median of {args.reps} ({adapter.name}, "
          f"{adapter.stat().st_size / 1e6:.1f} MB):")
    for k, (load, first) in med.items():
        print(f"  {k:8s} load {load * 1000:7.1f} ms   first token {first * 1000:7.1f} ms")
    extra = med["adapter"][1] - med["base"][1]
    print(f"  adapter adds {extra * 1000:.1f} ms to the first token (goal <= 1000 ms)")
    print(f"  a machine's first run also makes the Q8_0 copy once: {first_copy * 1000:.0f} ms")


if __name__ == "__main__":
    main()
