"""Do a finished SFT run's steps cost what they cost in that run? Steps of the run (the same batches:
the batch order is a pure function of the data and seed) run again in this fresh process, each printed
beside its time in the run's ``metrics.csv``.

The recipe's step time grows along a run (v11: 6.4 s/step over the first 100 steps, 9-10 s over the
last 100, on batches of the same mix). Run on late steps, this tells whether the growth belongs to the
batches or the adapter's state (a fresh process is as slow) or to the long-running process (a fresh
process is faster). ``--init trained`` loads the run's final checkpoint first (the adapter and
optimizer as they were at the end), so the adapter's state is the run's, not a fresh LoRA. ``--train N``
then trains N more steps in this process (the run's steps from ``--train-from``) and times the same
steps again after every ``--every`` of them: a process that slows as it trains shows it there, against a
fresh process's first timing.

    python benchmarks/bench_sft_drift.py --run runs/recipe-v11/sft --steps 480,500,540,600 [--init trained]
    python benchmarks/bench_sft_drift.py --run runs/recipe-v11/sft --steps 3,7,11,40,480,500 --train 80
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train.sft as sft  # noqa: E402
from train import checkpoint  # noqa: E402


def run_times(metrics: Path) -> dict[int, float]:
    """Seconds each step took in the run (step k's ``seconds`` minus step k-1's)."""
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("loss")]
    out, prev = {}, 0.0
    for r in rows:
        t = float(r["seconds"])
        out[int(r["step"])] = t - prev
        prev = t
    return out


def time_steps(tr: sft.SFTTrainer, steps: list[int]) -> list[float]:
    """Seconds of one training step at each of ``steps`` (the run's batch for that step)."""
    out = []
    for s in steps:
        tr.step = s
        t0 = time.perf_counter()
        tr.train_step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an SFT output dir (config.json, metrics.csv, checkpoint/)")
    ap.add_argument("--steps", required=True, help="comma-separated step numbers (0-based, as trained)")
    ap.add_argument("--init", choices=("fresh", "trained"), default="fresh",
                    help="the adapter's state: a fresh LoRA, or the run's final checkpoint")
    ap.add_argument("--train", type=int, default=0, help="then train this many steps, timing --steps again")
    ap.add_argument("--train-from", type=int, default=50, help="the first of those steps")
    ap.add_argument("--every", type=int, default=40, help="time --steps again after this many trained steps")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = sft.SFTConfig(**json.loads((run / "config.json").read_text()))
    cfg.output_dir, cfg.resume, cfg.progress, cfg.save_every = "/tmp/bench-sft-drift", False, False, 0
    tr = sft.SFTTrainer(cfg)
    if args.init == "trained":
        checkpoint.load(run / "checkpoint", tr.accel.unwrap_model(tr.model), tr.opt, tr.sched)
    before = run_times(run / "metrics.csv")
    steps = [int(s) for s in args.steps.split(",")]
    here = time_steps(tr, steps)
    for s, t in zip(steps, here):
        print(f"step {s}: here {t:.2f} s, in the run {before[s + 1]:.2f} s")
    then = sum(before[s + 1] for s in steps)
    print(f"\n{len(steps)} steps: here {sum(here):.1f} s, in the run {then:.1f} s: ratio {sum(here) / then:.3f}")
    first = sum(here)
    for k in range(args.train):
        tr.step = args.train_from + k
        tr.train_step()
        if (k + 1) % args.every == 0:
            again = time_steps(tr, steps)
            print(f"after {k + 1} trained steps: the {len(steps)} steps {sum(again):.1f} s, "
                  f"{sum(again) / first:.3f}x this process's first timing", flush=True)


if __name__ == "__main__":
    main()
