"""Sandbox latency and throughput, with a fresh ``python -c`` subprocess as the baseline measured in
the same run.

    python benchmarks/bench_sandbox.py [--backend process|docker] [--docker-host unix://...] [--out r.json]

Measures (p50 / p99 in ms): warm stateful exec in one session; session start from the pool (take a
pre-started worker + first exec) and cold (start a worker + first exec); executions per second with N
concurrent sessions; the baseline (spawn ``python -c`` and wait). Goals: warm p50 <= 1 ms,
session start <= 60 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Sandbox, SandboxConfig, WorkerPool


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(p99, 3), "n": len(ms)}


async def baseline(n: int, site_packages: bool) -> dict[str, float]:
    """Spawn a fresh interpreter per execution (same flags as the worker): the comparison point."""
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    flags = ["-I"] if site_packages else ["-I", "-S"]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(python, *flags, "-c", "x = 1; print(x + 1)",
                                                    stdout=asyncio.subprocess.PIPE)
        await proc.communicate()
        times.append(time.perf_counter() - t)
    return summary(times)


async def warm_exec(cfg: SandboxConfig, n: int) -> dict[str, float]:
    async with Sandbox(pool=None, config=cfg) as box:
        await box.run("x = 0")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await box.run("x += 1")
            times.append(time.perf_counter() - t)
    return summary(times)


async def pooled_start(pool: WorkerPool, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        await pool.wait_ready()
        t = time.perf_counter()
        async with Sandbox(pool=pool) as box:
            await box.run("x = 1")
            times.append(time.perf_counter() - t)
    return summary(times)


async def cold_start(cfg: SandboxConfig, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        async with Sandbox(config=cfg) as box:
            await box.run("x = 1")
            times.append(time.perf_counter() - t)
    return summary(times)


async def throughput(pool: WorkerPool, sessions: int, seconds: float) -> float:
    """Total executions per second over ``sessions`` concurrent sessions."""
    counts = [0] * sessions
    deadline = time.perf_counter() + seconds

    async def one(i: int) -> None:
        async with Sandbox(pool=pool) as box:
            await box.run("total = 0")
            while time.perf_counter() < deadline:
                await box.run("total += sum(range(100))")
                counts[i] += 1

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(sessions):
            tg.create_task(one(i))
    return round(sum(counts) / (time.perf_counter() - start), 1)


async def run(args: argparse.Namespace) -> dict[str, object]:
    cfg = SandboxConfig(backend=args.backend, docker_host=args.docker_host or "", image=args.image,
                        pool_size=max(args.sessions), timeout_s=10)
    cold_cfg = dataclasses.replace(cfg, pool_size=0)
    results: dict[str, object] = {"backend": args.backend, "cpus": os.cpu_count()}
    results["baseline_python_c"] = await baseline(args.n_spawn, cfg.site_packages)
    results["warm_exec"] = await warm_exec(cold_cfg, args.n_exec)
    async with WorkerPool(cfg) as pool:
        results["session_start_pooled"] = await pooled_start(pool, args.n_spawn)
        results["session_start_cold"] = await cold_start(cold_cfg, args.n_spawn)
        results["execs_per_s"] = {str(n): await throughput(pool, n, args.seconds) for n in args.sessions}
    base = results["baseline_python_c"]["p50_ms"]  # type: ignore[index]
    results["baseline_execs_per_s"] = round(1000 / base, 1)
    results["ratios_vs_baseline_p50"] = {k: round(base / results[k]["p50_ms"], 1)  # type: ignore[index]
                                         for k in ("warm_exec", "session_start_pooled", "session_start_cold")}
    return results


def report(r: dict[str, object]) -> str:
    lines = [f"sandbox benchmark: backend={r['backend']}, {r['cpus']} CPUs", "",
             f"{'measure':<34}{'p50 ms':>10}{'p99 ms':>10}{'x faster than python -c':>26}"]
    labels = {"baseline_python_c": "fresh `python -c` (baseline)", "warm_exec": "warm stateful exec",
              "session_start_pooled": "session start, from pool", "session_start_cold": "session start, cold"}
    ratios: dict[str, float] = r["ratios_vs_baseline_p50"]  # type: ignore[assignment]
    for key, label in labels.items():
        s = r[key]
        ratio = ratios.get(key, 1.0)
        lines.append(f"{label:<34}{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{ratio:>26}")  # type: ignore[index]
    lines += ["", f"executions/s (baseline python -c, serial: {r['baseline_execs_per_s']})"]
    for n, eps in r["execs_per_s"].items():  # type: ignore[union-attr]
        lines.append(f"  {n:>2} concurrent sessions: {eps:>10.1f}/s  "
                     f"({eps / r['baseline_execs_per_s']:.0f}x baseline)")  # type: ignore[operator]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="process", choices=["process", "docker"])
    p.add_argument("--docker-host", default="")
    p.add_argument("--image", default="splice-sandbox:latest")
    p.add_argument("--n-exec", type=int, default=2000, help="warm executions")
    p.add_argument("--n-spawn", type=int, default=40, help="session starts and baseline spawns")
    p.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    results = asyncio.run(run(args))
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
