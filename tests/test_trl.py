"""TRL's GRPOTrainer and SFTTrainer fed by splice, on a tiny random model with the REAL python sandbox.

A random model never writes tags, so ``Forcing`` (test-only) runs the real model forward on its real
KV cache every step but overrides the sampled token while a per-turn script is pending: turn 0
samples two free tokens then writes a python call, turn 1 answers with the number read from the
spliced sandbox output (right on even seeds, off by one on odd ones, so each group has reward
spread). The log-prob recorded for a forced token is still the model's own log-prob of that id.
Everything else is production code: SpliceRollout, Agent, parser, sandbox, masks, TRL itself.
"""

from __future__ import annotations

import re
from collections import Counter, deque

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from agent.backends.transformers import TransformersBackend, load_hf
from agent.errors import ConfigError
from agent.evals.metrics import accuracy_reward
from agent.trajectory import Segment, ToolCall, Trajectory
from train.export import to_hf_dataset
from train.render import IGNORE_INDEX, ChatRenderer
from train.trl import SpliceRollout, _question, rollout_fields, trl_reward

pytestmark = [pytest.mark.filterwarnings("ignore::sandbox.SandboxDegraded"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def script(context: str, turn: int, seed: int) -> str:
    if turn == 0:
        expr = re.findall(r"What is ([0-9*+]+)\?", context)[-1]
        return f"<code_start>print({expr})<code_end>"
    value = int(re.findall(r"<result_start>\s*(-?\d+)", context)[-1])
    return f"<answer_start>{value + seed % 2}<answer_end>"


class Forcing(TransformersBackend):
    def __init__(self, model, tokenizer):
        super().__init__(model=model, tokenizer=tokenizer)
        self.turns: Counter[int] = Counter()
        self.pending: dict[int, deque[int]] = {}
        self.free: dict[int, int] = {}
        self.banned = [i for i in range(len(tokenizer)) if set(tokenizer.decode([i])) & set("<>")]
        self.banned += list(self.eos_ids)

    def _step(self, seq, params, first):
        logits = self._forward(seq.state, seq.ids).copy()
        key = id(seq)
        if first:
            turn = self.turns[key]
            self.turns[key] += 1
            self.pending[key] = deque(self.encode(script(self.decode(seq.ids), turn, seq.seed)))
            self.free[key] = 2 if turn == 0 else 0
        if self.free[key] > 0:
            self.free[key] -= 1
            logits[self.banned] = -1e9
            from agent.backends.sampling import sample_token

            return sample_token(logits, params, seq.state.rng)
        return self.pending[key].popleft() if self.pending[key] else next(iter(self.eos_ids))

    async def release(self, seq):
        for table in (self.turns, self.pending, self.free):
            table.pop(id(seq), None)
        await super().release(seq)


class Probe(trl.GRPOTrainer):
    """Keeps each loss batch and the gradient of the loss at each position's log-prob."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches, self.grads = [], []

        def hook(module, args, out):
            lp = getattr(out, "log_probs", None)
            if lp is not None and lp.requires_grad:
                lp.register_hook(lambda g: self.grads.append(g.detach().clone()))

        self.model.register_forward_hook(hook)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.batches.append(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def own_logprobs(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    n = len(prompt)
    return [float(lp[n + j - 1, t]) for j, t in enumerate(completion)]


def test_grpo_trainer_trains_on_splice_rollouts_with_masked_tool_output(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    model, tok = load_hf(tiny_model_dir, "cpu")
    data = datasets.Dataset.from_dict({"prompt": ["What is 6*7?", "What is 7*8?"], "answer": ["42", "56"]})
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                          max_steps=2, max_completion_length=48, learning_rate=1e-3, logging_steps=1,
                          report_to="none", use_cpu=True, save_strategy="no", temperature=1.0, seed=0)
    rollout = SpliceRollout(tools=["python"], backend=lambda trainer: Forcing(trainer.model, tok), seed=0)
    received = []

    def rollout_func(prompts, trainer):
        out = rollout(prompts, trainer)
        mdl = trainer.accelerator.unwrap_model(trainer.model)
        received.append((out, [own_logprobs(mdl, p, c) for p, c in zip(out["prompt_ids"], out["completion_ids"])],
                         list(rollout.last)))
        return out

    trainer = Probe(model=model, args=args, train_dataset=data, processing_class=tok,
                    reward_funcs=[trl_reward("accuracy")], rollout_func=rollout_func)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with rollout:
        trainer.train()
    assert trainer.state.global_step == 2 and len(received) == 2

    # real python calls ran and their output is in the completion, masked
    for out, own, trajs in received:
        assert len(out["completion_ids"]) == 4
        for t, ids, mask, lps, mine in zip(trajs, out["completion_ids"], out["env_mask"], out["logprobs"], own):
            assert [(c.tool, c.error) for c in t.tool_calls] == [("python", False)]
            assert t.tool_calls[0].result.strip() in ("42", "56")
            assert ids == t.completion_ids and mask == t.completion_mask and 0 in mask and 1 in mask
            # the logprobs TRL receives are the model's own log-probs of the sampled ids
            sampled = [(a, b) for a, b, m in zip(lps, mine, mask) if m]
            assert [a for a, _ in sampled] == pytest.approx([b for _, b in sampled], abs=1e-3)  # KV cache vs full
            assert all(a == 0.0 for a, m in zip(lps, mask) if not m)
    rewards = [float(t.answer == t.tool_calls[0].result.strip()) for _, _, ts in received for t in ts]
    assert 0 < sum(rewards) < len(rewards)

    # the gradient at tool-result positions is exactly 0, and non-zero at every sampled one
    assert len(trainer.grads) == len(trainer.batches) == 2
    for inputs, grad in zip(trainer.batches, trainer.grads):
        c = inputs["completion_ids"].shape[1]
        g = grad[:, -c:]
        live, tool = inputs["completion_mask"].bool(), inputs["tool_mask"] == 0
        assert (tool & live).any()
        assert torch.all(g[tool & live] == 0)
        assert torch.all(g[live & ~tool] != 0)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def sft_rows():
    return [{"id": f"ex{i}", "messages": [
        {"role": "user", "content": f"What is {a}*{b}?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute it.\n"},
            {"type": "call", "tool": "python", "arg": f"print({a}*{b})"},
            {"type": "result", "text": f"{a * b}\n"},
            {"type": "answer", "text": str(a * b)}]}]} for i, (a, b) in enumerate([(6, 7), (7, 8), (3, 9), (12, 4)])]


def test_sft_trainer_trains_on_exported_splice_data(tiny_model_dir, tmp_path):
    model, tok = load_hf(tiny_model_dir, "cpu")
    rows = sft_rows()
    ds = to_hf_dataset(rows, tok, tools=["python"])
    assert ds.column_names == ["input_ids", "labels", "attention_mask"]
    renderer = ChatRenderer(tok, "splice", ["python"])
    for row, ex in zip(ds, rows):
        traj = renderer.trajectory(ex)  # the renderer's own rendering, unchanged
        assert row["input_ids"] == traj.token_ids
        for t, label, m, seg_src in zip(row["input_ids"], row["labels"], traj.loss_mask(),
                                        [s.source for s in traj.segments for _ in s.token_ids]):
            assert label == (t if m else IGNORE_INDEX)
            if seg_src in ("result", "prompt"):
                assert label == IGNORE_INDEX
        result = next(s for s in traj.segments if s.source == "result")
        assert result.token_ids and "<result_start>" in result.text
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, max_steps=2,
                         learning_rate=1e-3, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no")
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    seen = []
    collate = trainer.data_collator
    trainer.data_collator = lambda feats: seen.append(collate(feats)) or seen[-1]
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    # what TRL trained on: our labels, -100 kept on prompt and tool results
    for batch in seen:
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            n = next((r for r in ds if r["input_ids"] == ids[:len(r["input_ids"])]), None)
            assert n is not None
            assert labels[:len(n["labels"])] == n["labels"]


# -- the pieces, without a trainer -------------------------------------------------------------------
def _episode(answer: str | None, result: str = "42") -> Trajectory:
    return Trajectory("What is 6*7?", answer=answer, tool_calls=[ToolCall("python", "print(6*7)", result)],
                      segments=[Segment("prompt", "p", [1, 2]), Segment("model", "m", [3], logprobs=[-0.5]),
                                Segment("result", result, [4, 5]), Segment("model", "a", [6], logprobs=[-0.25])])


def test_trl_reward_takes_keyword_columns_and_scores_the_models_answer():
    trajs = [_episode("42"), _episode("41"), _episode(None, result="42")]  # the last never answered
    for fn in ("accuracy", accuracy_reward):
        reward = trl_reward(fn, answers="gold")
        got = reward(prompts=["q"] * 3, completions=["x"] * 3, completion_ids=[[1]] * 3,
                     gold=[["42"], ["42"], ["42"]], trajectory=trajs, trainer_state=None)
        assert got[:2] == [1.0, 0.0]
        assert reward.__name__ in ("accuracy", "accuracy_reward")
    assert trl_reward("accuracy")(completions=["x"] * 3, answer=["42"] * 3, trajectory=trajs)[2] == 0.0
    assert trl_reward("tool_cost")(completions=["x"] * 3, trajectory=trajs) == [-1.0] * 3
    with pytest.raises(ConfigError, match="no 'answer' column"):
        trl_reward("accuracy")(completions=["x"], trajectory=trajs[:1])
    with pytest.raises(ConfigError, match="unknown reward"):
        trl_reward("nope")


def test_rollout_fields_align_masks_logprobs_and_stub_failed_episodes():
    failed = Trajectory.failed("q", RuntimeError("boom"))
    out = rollout_fields([_episode("42"), failed], prompt_ids=[[], [7, 8]], end_id=9)
    assert out["prompt_ids"] == [[1, 2], [7, 8]]
    assert out["completion_ids"] == [[3, 4, 5, 6], [9]]
    assert out["env_mask"] == [[1, 0, 0, 1], [0]]
    assert out["logprobs"] == [[-0.5, 0.0, 0.0, -0.25], [0.0]]
    assert _question("hi") == ("hi", [])
    assert _question([{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]) == (
        "c", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_agent_train_dataset_writes_a_dataset_trl_can_load(tiny_model_dir, tmp_path, capsys):
    import json

    from agent.cli import main
    from train.data import write_jsonl

    rows = sft_rows()
    write_jsonl(rows, tmp_path / "sft.jsonl")
    assert main(["train", "dataset", "--data", str(tmp_path / "sft.jsonl"), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "ds")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == len(rows)
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    tok = load_hf(tiny_model_dir, device="cpu")[1]
    want = to_hf_dataset(rows, tok)
    assert ds["input_ids"] == want["input_ids"] and ds["labels"] == want["labels"]
    assert any(x == IGNORE_INDEX for x in ds["labels"][0]) and any(x != IGNORE_INDEX for x in ds["labels"][0])
