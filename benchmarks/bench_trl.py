"""GRPO completions per second: splice's own trainer (``train/grpo.py``) vs TRL's GRPOTrainer fed by
splice rollouts (``train/trl.py``), same model, prompts, group size, token budget and tools, one run.

    python benchmarks/bench_trl.py                     # tiny random Llama on CPU (the CI-sized run)
    python benchmarks/bench_trl.py --steps 4 --group 8 --json out.json

Both play the same episodes through the same backend class over the live policy: turn 0 writes a
real python call (forced token by token on the real model forward, as in tests/test_trl.py), the
sandbox runs it, the result is spliced, turn 1 samples freely up to the budget. Both train full
weights, one optimisation pass per batch, no KL. A first step of each is a warm-up, not timed.
Completions/s = episodes trained / wall seconds of the timed steps (rollout + scoring + update).
On a shared CPU the figure is noisy: compare the ratio from one run, not runs across machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agent.backends.sampling import sample_token
from agent.backends.transformers import TransformersBackend, load_hf

TASKS = [(f"What is {a}*{b}?", [str(a * b)]) for a, b in [(6, 7), (7, 8), (12, 12), (9, 4), (3, 11), (5, 13)]]


class ForcedCall(TransformersBackend):
    """The real model on its real cache; turn 0's tokens are overridden to write a python call."""

    def __init__(self, model, tokenizer):
        super().__init__(model=model, tokenizer=tokenizer)
        self.turns: Counter[int] = Counter()
        self.pending: dict[int, deque[int]] = {}
        self.banned = [i for i in range(len(tokenizer)) if set(tokenizer.decode([i])) & set("<>")]

    def _step(self, seq, params, first):
        logits = self._forward(seq.state, seq.ids).copy()
        key = id(seq)
        if first:
            turn = self.turns[key]
            self.turns[key] += 1
            expr = re.findall(r"What is ([0-9*]+)\?", self.decode(seq.ids))[-1]
            self.pending[key] = deque(self.encode(f"<code_start>print({expr})<code_end>") if turn == 0 else [])
        if self.pending[key]:
            return self.pending[key].popleft()
        logits[self.banned] = -1e9
        return sample_token(logits, params, seq.state.rng)

    async def release(self, seq):
        self.turns.pop(id(seq), None)
        self.pending.pop(id(seq), None)
        await super().release(seq)


def own_grpo(model_dir: Path, out: Path, a: argparse.Namespace) -> dict[str, float]:
    from train.grpo import GRPOConfig, GRPOTrainer

    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, row: dict[str, float]) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = GRPOConfig(model="unused", output_dir=str(out), steps=a.steps + 1, prompts_per_step=a.prompts,
                     group_size=a.group, epochs=1, micro_batch=a.prompts * a.group, lr=1e-4, kl_coef=0.0,
                     lora=False, rollout={"tools": ["python"], "max_new_tokens": a.tokens, "max_tool_calls": 1},
                     rewards="accuracy:1",
                     concurrency=a.prompts * a.group, progress=False, save_every=10**6, device="cpu", seed=0)
    model, tok = load_hf(model_dir, "cpu")
    GRPOTrainer(cfg, model=model, tokenizer=tok, tasks=TASKS, backend_factory=ForcedCall, on_step=tick).train()
    timed = times[1:]
    return {"steps": len(timed), "seconds": sum(timed), "completions_per_s": len(timed) * a.prompts * a.group /
            sum(timed)}


def trl_grpo(model_dir: Path, out: Path, a: argparse.Namespace) -> dict[str, float]:
    import datasets
    import trl
    from transformers import TrainerCallback

    from train.trl import SpliceRollout, trl_reward

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    model, tok = load_hf(model_dir, "cpu")
    n = a.prompts * (a.steps + 1)
    data = datasets.Dataset.from_dict({"prompt": [TASKS[i % len(TASKS)][0] for i in range(n)],
                                       "answer": [TASKS[i % len(TASKS)][1][0] for i in range(n)]})
    args = trl.GRPOConfig(output_dir=str(out), per_device_train_batch_size=a.prompts * a.group,
                          num_generations=a.group, max_steps=a.steps + 1, max_completion_length=a.tokens,
                          learning_rate=1e-4, logging_steps=10**6, report_to="none", use_cpu=True,
                          save_strategy="no", temperature=1.0, beta=0.0, num_iterations=1, seed=0,
                          disable_tqdm=True)
    from agent.runtime import RuntimeConfig

    with SpliceRollout(tools=["python"], config=RuntimeConfig(max_tool_calls=1),
                       backend=lambda trainer: ForcedCall(trainer.model, tok),
                       concurrency=a.prompts * a.group) as rollout:
        trainer = trl.GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                  reward_funcs=[trl_reward("accuracy")], rollout_func=rollout, callbacks=[Clock()])
        trainer.train()
    timed = times[1:]
    return {"steps": len(timed), "seconds": sum(timed), "completions_per_s": len(timed) * a.prompts * a.group /
            sum(timed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per trainer (plus one warm-up)")
    p.add_argument("--prompts", type=int, default=2, help="distinct prompts per step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt")
    p.add_argument("--tokens", type=int, default=48, help="model tokens per episode")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write the result here")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    from tests.conftest import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SPLICE_CACHE", str(Path(tmp) / "cache"))
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        own = own_grpo(model_dir, Path(tmp) / "own", a)
        via_trl = trl_grpo(model_dir, Path(tmp) / "trl", a)
    result = {"config": vars(a) | {"json": str(a.json) if a.json else None}, "own_grpo": own, "trl_splice": via_trl,
              "ratio_trl_over_own": via_trl["completions_per_s"] / own["completions_per_s"]}
    print(f"own GRPO (train/grpo.py)    {own['completions_per_s']:8.2f} completions/s  ({own['steps']} steps, "
          f"{own['seconds']:.2f} s)")
    print(f"TRL + splice rollouts       {via_trl['completions_per_s']:8.2f} completions/s  ({via_trl['steps']} steps, "
          f"{via_trl['seconds']:.2f} s)")
    print(f"ratio TRL / own             {result['ratio_trl_over_own']:8.2f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
