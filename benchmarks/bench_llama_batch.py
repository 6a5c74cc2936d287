"""Many episodes on one CPU llama.cpp model: questions/s of ``agent eval`` at ``--concurrency N``
with the multi-sequence backend (``n_seq=N``, one ``llama_decode`` per step for every running
episode) vs ``--concurrency 1`` on the single-sequence backend, in one run, and how often the two
give the same answer (llama.cpp numerics depend on batch shape, so greedy text may flip at a
near-tie; ARCHITECTURE.md). Goal (speed issue): >= 1.8x.

    python benchmarks/bench_llama_batch.py [--limit 64] [--concurrency 8] [--max-new-tokens 64] [--reps 1]

The same as ``agent eval gen:arith,count --limit 64 --tools none --max-new-tokens 64
--concurrency N`` on the default model, with the backend built here (``load_backend`` does not
pass ``n_seq`` yet).
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

from agent.backends import default_model_path  # noqa: E402
from agent.backends.llama_cpp import LlamaCppBackend  # noqa: E402
from agent.evals.config import EvalConfig  # noqa: E402
from agent.evals.runner import EPISODES, evaluate, load_episodes  # noqa: E402
from agent.runtime import RuntimeConfig  # noqa: E402


def run(out: Path, limit: int, concurrency: int, max_new: int, n_ctx: int) -> tuple[float, dict[str, str]]:
    """(questions/s, id -> predicted answer) of one eval run."""
    runtime = RuntimeConfig(tools=[], max_new_tokens=max_new, n_ctx=n_ctx)
    cfg = EvalConfig(data="gen:arith,count", out=str(out), limit=limit, concurrency=concurrency,
                     report=False, runtime=runtime)

    async def go() -> float:
        backend = LlamaCppBackend(default_model_path(), n_ctx=n_ctx, n_seq=concurrency)
        try:
            t0 = time.perf_counter()
            await evaluate(cfg, backend=backend)
            return time.perf_counter() - t0
        finally:
            await backend.aclose()

    dt = asyncio.run(go())
    records = load_episodes(out / EPISODES)
    return len(records) / dt, {r["id"]: r.get("pred", "") for r in records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per episode")
    ap.add_argument("--reps", type=int, default=1, help="alternated runs of each; the best rate is kept")
    a = ap.parse_args()
    q1 = qn = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):  # alternated, best of each: a busy neighbour hurts both alike
            r1, p1 = run(Path(tmp) / f"c1-{rep}", a.limit, 1, a.max_new_tokens, a.n_ctx)
            rn, pn = run(Path(tmp) / f"c{a.concurrency}-{rep}", a.limit, a.concurrency, a.max_new_tokens, a.n_ctx)
            q1, qn = max(q1, r1), max(qn, rn)
    same = sum(p1[k] == pn.get(k) for k in p1) / max(len(p1), 1)
    print(json.dumps({"questions": len(p1), "concurrency_1_q_per_s": round(q1, 3),
                      f"concurrency_{a.concurrency}_q_per_s": round(qn, 3), "ratio": round(qn / q1, 3),
                      "answer_agreement": round(same, 3)}))


if __name__ == "__main__":
    main()
