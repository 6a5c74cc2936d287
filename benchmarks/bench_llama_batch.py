"""Many episodes on one CPU llama.cpp model: questions/s of ``agent eval`` at ``--concurrency N``
with the multi-sequence backend (``n_seq=N``, one ``llama_decode`` per step for every running
episode) vs ``--concurrency 1`` on the single-sequence backend, in one run, and how often the two
give the same answer (llama.cpp numerics depend on batch shape, so greedy text may flip at a
near-tie; ARCHITECTURE.md). Goal (speed issue): >= 1.8x, same answers.

    python benchmarks/bench_llama_batch.py [--limit 64] [--concurrency 8] [--tools python] [--reps 1]

The same as ``agent eval gen:all --limit 64 --tools python --n-seq N --concurrency N`` (and
``--n-seq 1 --concurrency 1``) on the default model (the shipped adapter merged into the Q8_0 copy;
``--model base`` for the base alone, which then answers without tools).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends import BackendConfig, load_backend  # noqa: E402
from agent.evals.config import EvalConfig  # noqa: E402
from agent.evals.runner import EPISODES, evaluate, load_episodes  # noqa: E402
from agent.runtime import RuntimeConfig  # noqa: E402


def run(out: Path, a: argparse.Namespace, concurrency: int) -> tuple[float, dict[str, tuple[str, bool]]]:
    """(questions/s, id -> (predicted answer, correct)) of one eval run."""
    runtime = RuntimeConfig(model=a.model, tools=a.tools, max_new_tokens=a.max_new_tokens, temperature=0.0,
                            llm=BackendConfig(n_ctx=a.n_ctx, n_seq=concurrency, weights=a.weights))
    cfg = EvalConfig(data=a.data, out=str(out), limit=a.limit, concurrency=concurrency, modes=["+".join(a.tools)
                     or "none"], report=False, runtime=runtime)

    async def go() -> float:
        backend = await asyncio.to_thread(load_backend, runtime.model, runtime.llm)
        try:
            t0 = time.perf_counter()
            await evaluate(cfg, backend=backend)
            return time.perf_counter() - t0
        finally:
            await backend.aclose()

    dt = asyncio.run(go())
    records = load_episodes(out / EPISODES)
    return len(records) / dt, {r["id"]: (r.get("pred", ""), bool(r.get("correct"))) for r in records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--model", default="default", help="default (shipped adapter) or base")
    ap.add_argument("--tools", default="python", help="comma-separated; empty for none")
    ap.add_argument("--data", default="gen:all")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per episode")
    ap.add_argument("--weights", default="auto", help="auto (the default model as Q8_0) | as-is | q8_0")
    ap.add_argument("--reps", type=int, default=1, help="alternated runs of each; the best rate is kept")
    a = ap.parse_args()
    a.tools = [t for t in a.tools.split(",") if t]
    q1 = qn = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):  # alternated, best of each: a busy neighbour hurts both alike
            r1, p1 = run(Path(tmp) / f"c1-{rep}", a, 1)
            rn, pn = run(Path(tmp) / f"c{a.concurrency}-{rep}", a, a.concurrency)
            q1, qn = max(q1, r1), max(qn, rn)
    same = sum(p1[k][0] == pn.get(k, ("",))[0] for k in p1) / max(len(p1), 1)
    acc = {n: round(sum(c for _, c in p.values()) / max(len(p), 1), 3) for n, p in (("1", p1), ("n", pn))}
    print(json.dumps({"questions": len(p1), "concurrency_1_q_per_s": round(q1, 3),
                      f"concurrency_{a.concurrency}_q_per_s": round(qn, 3), "ratio": round(qn / q1, 3),
                      "answer_agreement": round(same, 3), "accuracy_concurrency_1": acc["1"],
                      f"accuracy_concurrency_{a.concurrency}": acc["n"]}))


if __name__ == "__main__":
    main()
