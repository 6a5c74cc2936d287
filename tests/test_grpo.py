"""GRPO end to end on a tiny random model with the REAL runtime and the REAL python sandbox.

A random model never writes tags, so ``ForcingBackend`` (test-only) runs the real model forward with
its KV cache on every step but overrides the sampled token while a per-turn script is pending: turn 0
samples a few free tokens, then writes a python call computing the question's expression; turn 1
answers with the number read from the spliced sandbox output (right on even seeds, off by one on odd
seeds, so every group has reward spread). Everything else is production code: Agent, parser, tool
sessions, splicing, masks, the trainer.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter, deque

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from agent import Agent
from agent.backends.sampling import sample_token
from agent.backends.transformers import TransformersBackend, load_hf
from agent.errors import ConfigError
from train import grpo
from train.grpo import GRPOConfig, GRPOTrainer, grpo_loss, logprobs_from_logits, rollout_config
from train.rollout import pack

pytestmark = pytest.mark.filterwarnings("ignore::sandbox.SandboxDegraded")

TASKS = [("What is 6*7?", ["42"]), ("What is 12*12?", ["144"]), ("What is 7*8?", ["56"])]
FREE_TOKENS = 3


def script(context: str, turn: int, seed: int) -> str:
    if turn == 0:
        expr = re.findall(r"What is ([0-9*+]+)\?", context)[-1]
        return f"<code_start>print({expr})<code_end>"
    value = int(re.findall(r"<result_start>\s*(-?\d+)", context)[-1])
    return f"<answer_start>{value + seed % 2}<answer_end>"


class ForcingBackend(TransformersBackend):
    """The real backend, with a logits override per turn (see the module docstring)."""

    def __init__(self, model, tokenizer):
        super().__init__(model=model, tokenizer=tokenizer)
        self.turns: Counter[int] = Counter()
        self.pending: dict[int, deque[int]] = {}
        self.free: dict[int, int] = {}
        # free tokens may not write any tag character
        self.banned = [i for i in range(len(tokenizer)) if set(tokenizer.decode([i])) & set("<>")]
        self.banned += list(self.eos_ids)

    def _step(self, seq, params, first):
        logits = self._forward(seq.state, seq.ids)  # the real model, on its real cache
        key = id(seq)
        if first:
            turn = self.turns[key]
            self.turns[key] += 1
            self.pending[key] = deque(self.encode(script(self.decode(seq.ids), turn, seq.seed)))
            self.free[key] = FREE_TOKENS if turn == 0 else 0
        if self.free[key] > 0:
            self.free[key] -= 1
            logits[self.banned] = -1e9
            return sample_token(logits, params, seq.state.rng)
        return self.pending[key].popleft() if self.pending[key] else next(iter(self.eos_ids))

    async def release(self, seq):
        for table in (self.turns, self.pending, self.free):
            table.pop(id(seq), None)
        await super().release(seq)


def config(tmp_path, **kw) -> GRPOConfig:
    base = {"model": "unused", "output_dir": str(tmp_path / "run"), "steps": 2, "prompts_per_step": 2,
            "group_size": 4, "epochs": 2, "micro_batch": 3, "lr": 5e-3, "kl_coef": 0.05, "lora": True,
            "lora_r": 4, "lora_alpha": 8, "tools": ["python"], "max_new_tokens": 48, "max_tool_calls": 2,
            "save_every": 1, "concurrency": 8, "rewards": "accuracy:1,format:0.2", "progress": False, "seed": 3}
    kw = {**base, **kw}
    rollout = {k: kw.pop(k) for k in ('tools', 'max_new_tokens', 'max_tool_calls', 'syntax', 'temperature', 'top_p', 'max_result_tokens', 'tool_timeout_s') if k in kw}
    return GRPOConfig(rollout=rollout_config(**rollout), **kw)


def trainer(cfg, model_dir, **kw) -> GRPOTrainer:
    model, tok = load_hf(model_dir, device="cpu")
    return GRPOTrainer(cfg, model=model, tokenizer=tok, tasks=TASKS, backend_factory=ForcingBackend, **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grpo_steps_with_real_tool_calls(tiny_model_dir, tmp_path):
    cfg = config(tmp_path, clip_eps=0.02)
    t = trainer(cfg, tiny_model_dir)
    base_before = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
    rows = t.train()

    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["accuracy"] == 0.5 and r["reward/format"] == 1.0  # even seeds right, odd seeds off by one
        assert r["tool_calls"] == 1.0 and r["tool_errors"] == 0.0
        assert r["reward_mean"] == pytest.approx(0.7) and r["zero_std_groups"] == 0.0
        assert r["void_frac"] == 0.0 and r["response_len"] > FREE_TOKENS
    assert rows[0]["kl"] > 0  # the second epoch already moved away from the reference (adapter off)
    # epoch 1 samples its own weights (ratio exactly 1: never clipped); epoch 2's ratio leaves [0.98, 1.02]
    assert all(0.0 < r["clip_frac"] <= 0.5 for r in rows)

    out = tmp_path / "run"
    episodes = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(episodes) == 2 * 2 * 4
    for e in episodes:
        traj = e["trajectory"]
        call = traj["tool_calls"][0]
        assert call["tool"] == "python" and not call["error"]
        assert call["result"].strip() == str(eval(call["arg"][len("print("):-1]))  # the sandbox ran it
        sources = [s["source"] for s in traj["segments"]]
        assert sources == ["prompt", "model", "result", "model"]
        assert e["reward"] == pytest.approx(1.2 if e["trajectory"]["meta"]["seed"] % 2 == 0 else 0.2)
    assert [r["step"] for r in read_csv(out / "metrics.csv")] == ["1", "2"]
    assert (out / "rewards.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["group_size"] == 4
    assert (out / "final" / "adapter_config.json").exists()

    changed = [n for n, p in t.model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)  # every LoRA weight moved
    assert all(torch.equal(p, base_before[n]) for n, p in t.model.named_parameters() if not p.requires_grad)


async def test_tool_result_tokens_get_exactly_zero_gradient(tiny_model_dir):
    model, tok = load_hf(tiny_model_dir, device="cpu")
    async with Agent(ForcingBackend(model, tok), tools=["python"], max_new_tokens=48, temperature=1.0) as agent:
        trajs = [await agent.run("What is 6*7?", seed=s) for s in (0, 1)]
    assert all(t.tool_calls and t.tool_calls[0].result.strip() == "42" for t in trajs)
    batch = pack(trajs, pad_id=tok.pad_token_id)
    model.train()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits.retain_grad()
    logp = logprobs_from_logits(logits, batch.input_ids, 0.7)
    old = logp.detach() + 0.3 * torch.randn_like(logp)  # ratios away from 1, some clipped
    loss, stats = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), batch.loss_mask, ref_logp=old, kl_coef=0.1)
    loss.backward()
    assert stats["clipped"] > 0

    grad = logits.grad[:, :-1].abs().sum(-1)  # position t predicts token t+1
    for b, traj in enumerate(trajs):
        pos, result_positions = 0, []
        for seg in traj.segments:
            if seg.source == "result":
                result_positions += [p - 1 for p in range(pos, pos + len(seg.token_ids))]
            pos += len(seg.token_ids)
        assert result_positions and all(batch.loss_mask[b, p] == 0 for p in result_positions)
        assert all(grad[b, p].item() == 0.0 for p in result_positions)  # exactly zero, not small
        sampled = batch.loss_mask[b].nonzero().flatten().tolist()
        assert sampled and all(grad[b, p].item() > 0 for p in sampled)
        assert (grad[b][batch.loss_mask[b] == 0] == 0).all()  # prompt and padding too


class Killed(Exception):
    pass


def test_resume_after_kill_continues_at_next_step_with_saved_weights(tiny_model_dir, tmp_path):
    def kill_at_3(step, row):
        if step == 3:
            raise Killed  # dies after writing step 3's metrics, before its checkpoint

    cfg = config(tmp_path, steps=4, save_every=2, epochs=1)
    with pytest.raises(Killed):
        trainer(cfg, tiny_model_dir, on_step=kill_at_3).train()
    out = tmp_path / "run"
    killed_rows = read_csv(out / "metrics.csv")
    assert [r["step"] for r in killed_rows] == ["1", "2", "3"]
    saved = torch.load(out / "checkpoints" / "step-000002" / "state.pt", weights_only=True)

    seen = {}

    def snapshot_backend(model, tokenizer):  # called once the checkpoint is loaded, before any step
        seen.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return ForcingBackend(model, tokenizer)

    model, tok = load_hf(tiny_model_dir, device="cpu")
    resumed = GRPOTrainer(config(tmp_path, steps=4, save_every=2, epochs=1, resume=True), model=model,
                          tokenizer=tok, tasks=TASKS, backend_factory=snapshot_backend)
    rows = resumed.train()

    assert resumed.start_step == 3 and [r["step"] for r in rows] == [3, 4]
    assert seen.keys() == saved["params"].keys()
    assert all(torch.equal(seen[n], saved["params"][n]) for n in seen)
    final_rows = read_csv(out / "metrics.csv")
    assert [r["step"] for r in final_rows] == ["1", "2", "3", "4"]
    assert final_rows[:2] == killed_rows[:2]
    # same weights, optimizer state and seeds: step 3 replays exactly
    assert float(final_rows[2]["reward_mean"]) == float(killed_rows[2]["reward_mean"])
    assert float(final_rows[2]["loss"]) == pytest.approx(float(killed_rows[2]["loss"]), rel=1e-4, abs=1e-6)
    steps = Counter(json.loads(line)["step"] for line in (out / "rollouts.jsonl").read_text().splitlines())
    assert steps == {1: 8, 2: 8, 3: 8, 4: 8}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_full_finetune_with_reference_copy(tiny_model_dir, tmp_path):
    cfg = config(tmp_path, steps=1, lora=False, kl_coef=0.1, lr=1e-3, loss_norm="sequence")
    t = trainer(cfg, tiny_model_dir)
    assert t.ref is not None and not any(p.requires_grad for p in t.ref.parameters())
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    [row] = t.train()
    assert row["kl"] > 0 and row["accuracy"] == 0.5
    assert any(not torch.equal(p, before[n]) for n, p in t.model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in t.ref.named_parameters())


def test_cli_runs_a_real_sampling_step(tiny_model_dir, tmp_path):
    """The unforced path: ``agent train grpo`` flags -> load model dir -> TransformersBackend sampling."""
    data = tmp_path / "tasks.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": a[0]}) for q, a in TASKS))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    grpo.add_parser(sub)
    ns = parser.parse_args(["grpo", "--model", str(tiny_model_dir), "--tasks", str(data), "--steps", "1",
                            "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "12",
                            "--output-dir", str(tmp_path / "cli"), "--no-progress", "--device", "cpu",
                            "--tools", "python", "--rewards", "accuracy:1,format:0.5,tool_cost:0.01"])
    assert ns.func(ns) == 0
    [row] = read_csv(tmp_path / "cli" / "metrics.csv")
    assert float(row["response_len"]) > 0 and row["step"] == "1"
    assert (tmp_path / "cli" / "checkpoints" / "step-000001" / "state.pt").exists()


async def test_batched_rollout_backend_samples_from_the_live_lora_policy(tiny_model_dir):
    model, tok = load_hf(tiny_model_dir, device="cpu")
    cfg = GRPOConfig(model="unused", lora_r=4, rollout_backend="batched", concurrency=2)
    policy = grpo._with_lora(model, cfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter now changes what the model says

    async def greedy(backend):
        async with Agent(backend, tools=[], max_new_tokens=12, temperature=0) as agent:
            return (await agent.run("hello there")).completion_ids

    batched = await greedy(grpo.rollout_backend(cfg)(policy, tok))
    single = await greedy(TransformersBackend(model=policy, tokenizer=tok))
    with policy.disable_adapter():
        base = await greedy(TransformersBackend(model=policy, tokenizer=tok))
    assert batched == single and single != base


def test_generated_tasks_use_training_phrasings_unless_a_split_is_named():
    from agent.evals.tasks import generate_mix
    from train.grpo import load_tasks

    got = [q for q, _ in load_tasks(GRPOConfig(tasks="count,reverse", n_tasks=60, seed=4))]
    assert got == [e.question for e in generate_mix(["count", "reverse"], 60, 4, "train")]
    held = [q for q, _ in load_tasks(GRPOConfig(tasks="count@heldout", n_tasks=10, seed=4))]
    assert held == [e.question for e in generate_mix(["count"], 10, 4, "heldout")]


def test_init_adapter_continues_training_the_given_lora(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    model, tok = load_hf(tiny_model_dir, device="cpu")
    sft = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_()
    saved = {n: p.detach().clone() for n, p in sft.named_parameters() if "lora_" in n}
    sft.save_pretrained(tmp_path / "sft" / "adapter")

    fresh, tok = load_hf(tiny_model_dir, device="cpu")
    t = GRPOTrainer(config(tmp_path, init_adapter=str(tmp_path / "sft")), model=fresh, tokenizer=tok, tasks=TASKS,
                    backend_factory=ForcingBackend)
    lora = {n: p for n, p in t.model.named_parameters() if "lora_" in n}
    assert lora.keys() == saved.keys() and all(p.requires_grad for p in lora.values())
    assert all(torch.equal(lora[n], saved[n]) for n in saved)
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        GRPOTrainer(config(tmp_path, init_adapter=str(tmp_path)), model=load_hf(tiny_model_dir, device="cpu")[0],
                    tokenizer=tok, tasks=TASKS, backend_factory=ForcingBackend)
