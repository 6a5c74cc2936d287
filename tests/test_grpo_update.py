"""GRPO updates on the tiny random Llama, checked for direction and against hand computations.

The rollouts are the real runtime's; ``ForcedAnswers`` (test-only) is the real transformers backend
with the sampled token replaced by a fixed answer per (question, seed), so rewards are known in
advance. Everything else (rewards, advantages, packing, log-probs, the clipped objective, KL, AdamW)
is the production trainer's.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from agent import Agent
from agent.backends.transformers import TransformersBackend, load_hf
from train.grpo import GRPOConfig, GRPOTrainer, logprobs_from_logits, rollout_config
from train.rollout import TraceWriter, pack, rollout_groups

PICK, SEVEN = "Pick a number.", "Say seven."


def answer_for(question: str, seed: int) -> str:
    """``PICK``: 7 (rewarded) on even seeds, 3 on odd ones. ``SEVEN``: always 7."""
    return "7" if SEVEN in question or seed % 2 == 0 else "3"


class ForcedAnswers(TransformersBackend):
    def __init__(self, model, tokenizer):
        super().__init__(model=model, tokenizer=tokenizer)
        self.pending: dict[int, deque[int]] = {}

    def _step(self, seq, params, first):
        if first:
            text = self.decode(seq.ids)
            question = SEVEN if SEVEN in text else PICK
            self.pending[id(seq)] = deque(self.encode(f"<answer_start>{answer_for(question, seq.seed)}<answer_end>"))
        q = self.pending[id(seq)]
        return q.popleft() if q else next(iter(self.eos_ids))

    async def release(self, seq):
        self.pending.pop(id(seq), None)
        await super().release(seq)


def config(tmp_path, **kw) -> GRPOConfig:
    base = {"model": "unused", "output_dir": str(tmp_path / "run"), "steps": 1, "prompts_per_step": 1,
            "group_size": 4, "epochs": 1, "micro_batch": 8, "lr": 1e-2, "kl_coef": 0.0, "lora": True,
            "lora_r": 4, "lora_alpha": 8, "tools": [], "max_new_tokens": 24, "rewards": "accuracy:1",
            "progress": False, "seed": 0, "concurrency": 8}
    kw = {**base, **kw}
    rollout = {k: kw.pop(k) for k in ('tools', 'max_new_tokens', 'max_tool_calls', 'syntax', 'temperature', 'top_p', 'max_result_tokens', 'tool_timeout_s') if k in kw}
    return GRPOConfig(rollout=rollout_config(**rollout), **kw)


def make_trainer(cfg, model_dir, tasks, **model_kw) -> GRPOTrainer:
    model, tok = load_hf(model_dir, device="cpu")
    if model_kw:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **model_kw).eval()
    return GRPOTrainer(cfg, model=model, tokenizer=tok, tasks=tasks, backend_factory=ForcedAnswers)


def play(t: GRPOTrainer, tasks, seed: int = 0):
    """The trainer's own rollout of ``tasks`` (group_size each), scored by its rewards."""
    async def go():
        async with Agent(t.backend_factory(t.model, t.tokenizer), tools=[], config=t.cfg.runtime()) as agent:
            return await rollout_groups(agent, tasks, t.cfg.group_size, seed=seed)

    episodes = asyncio.run(go())
    t._score(episodes)
    return episodes


def one_step(t: GRPOTrainer, tasks, tmp_path) -> tuple[dict, list[dict]]:
    """``t.step`` (rollouts, rewards, advantages, optimisation) on ``tasks`` in order; its row and traces."""
    t.traces = TraceWriter(tmp_path / "r.jsonl")
    t._tasks_for = lambda step: list(tasks)
    with asyncio.Runner() as runner:
        agent = t._agent()
        try:
            row = t.step(runner, agent, 1)
        finally:
            runner.run(agent.aclose())
    return row, [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]


def answer_logp(t: GRPOTrainer, traj) -> float:
    """Summed log-prob of the model-written tokens of ``traj`` under the current policy."""
    batch = pack([traj], t.pad_id)
    return float((t.behaviour_logp(batch) * batch.loss_mask).sum())


def test_update_raises_the_rewarded_answer_and_lowers_the_other(tiny_model_dir, tmp_path):
    t = make_trainer(config(tmp_path), tiny_model_dir, [(PICK, ["7"])])
    episodes = play(t, [(PICK, ["7"])])
    assert [e.reward for e in episodes] == [1.0, 0.0, 1.0, 0.0]
    assert [e.advantage > 0 for e in episodes] == [True, False, True, False]
    right, wrong = episodes[0].trajectory, episodes[1].trajectory
    before = answer_logp(t, right), answer_logp(t, wrong)
    t._optimise(episodes)
    after = answer_logp(t, right), answer_logp(t, wrong)
    assert after[0] > before[0] + 1e-3  # the rewarded answer became more likely
    assert after[1] < before[1] - 1e-3  # the unrewarded one less likely


def test_advantages_are_normalised_within_each_group(tiny_model_dir, tmp_path):
    """One group where every answer is right (no signal: advantage 0) next to a mixed group."""
    tasks = [(SEVEN, ["7"]), (PICK, ["7"])]
    t = make_trainer(config(tmp_path, prompts_per_step=2), tiny_model_dir, tasks)
    row, got = one_step(t, tasks, tmp_path)
    assert [g["reward"] for g in got] == [1.0] * 4 + [1.0, 0.0, 1.0, 0.0]
    # group 2: mean 0.5, unbiased std 0.57735 -> +-0.5 / (0.57735 + 1e-4); batch-wide would give group 1 > 0
    a = 0.5 / (0.5773503 + 1e-4)
    assert [g["advantage"] for g in got] == pytest.approx([0, 0, 0, 0, a, -a, a, -a], abs=1e-5)
    assert row["zero_std_groups"] == 0.5


def test_second_epoch_ratio_and_clipping_match_a_hand_computation(tiny_model_dir, tmp_path):
    eps = 0.05
    t = make_trainer(config(tmp_path, epochs=2, clip_eps=eps, micro_batch=3), tiny_model_dir, [(PICK, ["7"])])
    episodes = play(t, [(PICK, ["7"])])
    batch = pack([e.trajectory for e in episodes], t.pad_id)
    adv = torch.tensor([e.advantage for e in episodes]).unsqueeze(-1)
    old = t.behaviour_logp(batch)
    after_epoch = []
    t.optimizer.register_step_post_hook(lambda *_: after_epoch.append(t.behaviour_logp(batch)))
    stats = t._optimise(episodes)

    mask, n = batch.loss_mask, float(batch.loss_mask.sum())
    ratio = torch.exp(after_epoch[0] - old)  # epoch 2 sees the weights after epoch 1's step
    assert float(((ratio - 1).abs() * mask).max()) > 2 * eps  # the ratio really left 1
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    epoch1 = float((-adv * mask).sum()) / n  # ratio exactly 1: no dropout, same weights as sampled
    epoch2 = float((-surrogate * mask).sum()) / n
    clipped = (((ratio > 1 + eps) & (adv > 0)) | ((ratio < 1 - eps) & (adv < 0))) & (mask > 0)
    assert int(clipped.sum()) > 0
    assert stats["clipped"] == int(clipped.sum())
    assert stats["loss"] == pytest.approx(epoch1 + epoch2, rel=1e-4, abs=1e-6)
    assert stats["tokens"] == 2 * n


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_kl_term_is_measured_against_the_base_weights_and_pulls_toward_them(tiny_model_dir, tmp_path, lora):
    """Every answer right (advantages all 0): only the KL term acts. The policy starts away from the
    reference; the reference is the base weights loaded from disk independently of the trainer."""
    tasks = [(SEVEN, ["7"])]
    t = make_trainer(config(tmp_path, kl_coef=1.0, lora=lora, lr=3e-3 if lora else 2e-4), tiny_model_dir, tasks)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            if p.requires_grad and (not lora or "lora_B" in name):
                p.add_((0.05 if lora else 0.01) * torch.randn_like(p))
    episodes = play(t, tasks)
    assert all(e.advantage == 0 for e in episodes)
    batch = pack([e.trajectory for e in episodes], t.pad_id)
    base, _ = load_hf(tiny_model_dir, device="cpu")
    with torch.no_grad():
        ref = logprobs_from_logits(base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                   batch.input_ids, t.temperature)

    def k3() -> float:
        d = (ref - t.behaviour_logp(batch)) * batch.loss_mask
        return float(((torch.exp(d) - d - 1) * batch.loss_mask).sum())

    before = k3()
    stats = t._optimise(episodes)
    assert before > 1e-3 and stats["kl"] == pytest.approx(before, rel=1e-3)
    assert k3() < 0.9 * before  # the step moved the policy toward the reference


def test_no_dropout_in_any_grpo_forward_and_top_p_is_ignored_alike(tiny_model_dir, tmp_path):
    """A model with dropout 0.5 (attention and LoRA) takes exactly the step of the same weights with
    dropout 0: old, reference and new log-probs all run in eval mode. With ``top_p`` < 1 the old
    log-probs are the untruncated ones at the sampling temperature, the same function as the new."""
    tasks = [(PICK, ["7"])]
    kw = {"epochs": 2, "kl_coef": 0.5, "top_p": 0.5, "temperature": 0.8, "clip_eps": 0.1}
    runs = []
    for dropout in (0.5, 0.0):
        cfg = config(tmp_path / str(dropout), lora_dropout=dropout, **kw)
        t = make_trainer(cfg, tiny_model_dir, tasks, attention_dropout=dropout)
        episodes = play(t, tasks)
        batch = pack([e.trajectory for e in episodes], t.pad_id)
        t.model.train()  # whatever mode the trainer is left in, its log-probs must not see dropout
        old = t.behaviour_logp(batch)
        stats = t._optimise(episodes)
        runs.append((old, stats, {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}))
        with torch.no_grad():
            logits = t.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    (old_d, stats_d, w_d), (old_0, stats_0, w_0) = runs
    assert torch.equal(old_d, old_0)
    assert stats_d["kl"] > 0 and stats_d["clipped"] == stats_0["clipped"]
    assert stats_d["loss"] == pytest.approx(stats_0["loss"], rel=1e-6)
    assert stats_d["kl"] == pytest.approx(stats_0["kl"], rel=1e-6)
    assert all(torch.allclose(w_d[n], w_0[n], atol=1e-7) for n in w_0)
    untruncated = torch.log_softmax(logits[:, :-1] / 0.8, -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    assert torch.allclose(t.behaviour_logp(batch), untruncated, atol=1e-5)


class CrashOnSeed1(ForcedAnswers):
    def _step(self, seq, params, first):
        if seq.seed == 1:
            raise RuntimeError("backend bug in one episode")
        return super()._step(seq, params, first)


def test_a_crashed_episode_is_counted_and_left_out_the_step_still_trains(tiny_model_dir, tmp_path):
    model, tok = load_hf(tiny_model_dir, device="cpu")
    t = GRPOTrainer(config(tmp_path), model=model, tokenizer=tok, tasks=[(PICK, ["7"])], backend_factory=CrashOnSeed1)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
    row, got = one_step(t, [(PICK, ["7"])], tmp_path)
    assert row["failed"] == 1 and row["reward_mean"] == pytest.approx(2 / 3)  # over the episodes that ran
    assert ["backend bug in one episode" in g["error"] for g in got] == [False, True, False, False]
    assert got[1]["void"] and got[1]["advantage"] == 0.0
    # the baseline of the three that ran: rewards 1, 1, 0 -> mean 2/3, unbiased std 0.57735
    a, b = (1 / 3) / (0.5773503 + 1e-4), (-2 / 3) / (0.5773503 + 1e-4)
    assert [got[i]["advantage"] for i in (0, 2, 3)] == pytest.approx([a, a, b], abs=1e-5)
    assert any(not torch.equal(p, before[n]) for n, p in t.model.named_parameters() if p.requires_grad)
