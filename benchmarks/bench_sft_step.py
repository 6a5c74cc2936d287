"""SFT step time of the shipped recipe's configuration on its own data: prefix sharing per group of
rows (a batch that mixes system prompts runs each prompt once, ``train.sft.prefix_groups``) against
one group per micro-batch (the prefix every row shares, often only the first sentence of the system
prompt, as before), and optionally LoRA on the top layers only (``--lora-layers``).

A sample of the epoch's real steps (``--steps``, drawn by ``--seed``) runs under each setting, the
settings alternating step by step on one model, so machine drift hits both. The printed ratio is the
summed time of the sampled steps; the estimate for the whole run is that ratio times the baseline's
mean step time times the number of steps.

    python benchmarks/bench_sft_step.py --data runs/recipe-v6/data/sft.jsonl [--steps 24] [--lora-layers 20]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train.sft as sft  # noqa: E402
from train.recipe import RECIPES  # noqa: E402


def _one_group(feats, min_len: int = 32):
    return [list(range(len(feats)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the recipe's sft.jsonl")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--steps", type=int, default=24, help="sampled steps per setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-layers", type=int, default=-1, help="also time this --lora-layers (-1: skip)")
    args = ap.parse_args()

    spec = dict(RECIPES[args.recipe]["sft"])
    spec.update(save_every=0, lora_layers=0)
    settings = {"one group (baseline)": (_one_group, 0), "per-prompt groups": (sft.prefix_groups, 0)}
    if args.lora_layers >= 0:
        settings[f"per-prompt groups + top {args.lora_layers} layers"] = (sft.prefix_groups, args.lora_layers)
    trainers = {}
    for _, layers in settings.values():
        if layers not in trainers:
            cfg = sft.SFTConfig(model="default", data=args.data, output_dir="/tmp/bench-sft-step", progress=False,
                                resume=False, **{**spec, "lora_layers": layers})
            trainers[layers] = sft.SFTTrainer(cfg)
    total = trainers[0].total_steps
    steps = sorted(random.Random(args.seed).sample(range(total), min(args.steps, total)))
    times = {name: [] for name in settings}
    for t in trainers.values():  # warm-up: first-call allocations
        t.step = steps[0]
        t.train_step()
    for k, step in enumerate(steps):
        names = list(settings) if k % 2 == 0 else list(reversed(settings))
        for name in names:
            grouping, layers = settings[name]
            sft.prefix_groups = grouping
            t = trainers[layers]
            t.step = step
            t0 = time.perf_counter()
            t.train_step()
            times[name].append(time.perf_counter() - t0)
        print(f"step {step}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in settings), flush=True)
    base = sum(times["one group (baseline)"])
    print(f"\n{len(steps)} sampled steps of {total}")
    for name, ts in times.items():
        est = sum(ts) / len(ts) * total / 60
        print(f"{name:40s} {sum(ts):8.1f} s  ratio {sum(ts) / base:.3f}  whole run about {est:.0f} min")


if __name__ == "__main__":
    main()
