"""Load and leaks: many episodes through the real python sandbox, watching what is left behind.

    python benchmarks/bench_load.py [--episodes 1000] [--concurrency 64] [--rounds 4] [--out r.json]

A scripted model (no model cost) makes one small python call per episode (``print(i * i)``) and then
answers with the printed number, so every episode opens a sandbox session, runs code and closes it.
The episodes run in ``--rounds`` rounds on one Agent (``run_many``). Before the first round, after
each round and after the Agent is closed it prints: child processes of this process, open fds,
``splice-sandbox-*`` temp dirs, and RSS. A leak shows as a count that grows round over round or
survives the close; the answers are checked, so a round that "finishes" by failing is seen too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from agent import Agent, ScriptedBackend  # noqa: E402


def snapshot() -> dict[str, float]:
    me = psutil.Process()
    dirs = list(Path(tempfile.gettempdir()).glob("splice-sandbox-*"))
    return {"children": len(me.children(recursive=True)), "fds": len(os.listdir("/proc/self/fd")),
            "sandbox_dirs": len(dirs), "rss_mb": round(me.memory_info().rss / 2**20, 1)}


def script(ctx: str) -> str:
    """``q<i>`` -> compute i*i in python, then answer with the printed result."""
    turn = ctx.rsplit("<|user|>", 1)[1]
    results = re.findall(r"<result_start>\n(.*?)\n<result_end>", turn, re.DOTALL)
    if not results:
        i = int(re.search(r"q(\d+)", turn).group(1))  # type: ignore[union-attr]
        return f"<code_start>print({i} * {i})<code_end>"
    return f"<answer_start>{results[-1].strip()}<answer_end>"


def show(label: str, row: dict[str, float]) -> None:
    print(f"{label:>10}  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


async def main(args: argparse.Namespace) -> dict:
    before = snapshot()
    show("before", before)
    rows = []
    per_round = -(-args.episodes // args.rounds)
    agent = Agent(ScriptedBackend(script), tools=["python"], max_new_tokens=256)
    async with agent:
        for r in range(args.rounds):
            ids = range(r * per_round, min(args.episodes, (r + 1) * per_round))
            t0 = time.perf_counter()
            trajs = await agent.run_many([f"q{i}" for i in ids], concurrency=args.concurrency)
            dt = time.perf_counter() - t0
            ok = sum(t.answer == str(i * i) for i, t in zip(ids, trajs))
            errors = sum(t.stop_reason == "error" or any(c.error for c in t.tool_calls) for t in trajs)
            row = {"episodes": len(trajs), "correct": ok, "errors": errors, "seconds": round(dt, 2),
                   **snapshot()}
            rows.append(row)
            show(f"round {r + 1}", row)
    await asyncio.sleep(0.5)  # let exited children be reaped
    after = snapshot()
    show("closed", after)
    result = {"episodes": args.episodes, "concurrency": args.concurrency, "before": before, "rounds": rows,
              "after_close": after, "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
              "seconds": round(sum(r["seconds"] for r in rows), 2)}
    print(f"total {result['seconds']} s; left after close: {after['children']} children, "
          f"{after['fds'] - before['fds']:+d} fds, {after['sandbox_dirs'] - before['sandbox_dirs']:+d} sandbox dirs; "
          f"RSS {before['rss_mb']} -> {after['rss_mb']} MB ({result['rss_growth_mb']:+} MB)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    a = ap.parse_args()
    res = asyncio.run(main(a))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
