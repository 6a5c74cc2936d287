"""The reward model: Bradley-Terry on a tiny random LM learns a trivially separable preference set,
scores held-out pairs right, round-trips through disk, and drives a GRPO step as a reward."""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from agent.errors import DataError
from train import grpo, reward
from train.reward import (
    Pair,
    RewardConfig,
    RewardModel,
    bradley_terry_loss,
    load_pairs,
    pairwise_accuracy,
    train_reward_model,
)

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "city", "river", "year", "number", "name"]


def make_pairs(n: int, seed: int) -> list[Pair]:
    """Chosen responses give a numeric answer; rejected ones refuse. Prompts never repeat across seeds."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = f"question {seed}-{i}: " + " ".join(rng.choices(WORDS, k=6))
        filler = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
        pairs.append(Pair(prompt, f"{filler} the answer is {rng.randint(10, 999)}",
                          f"{filler} sorry, I cannot say"))
    return pairs


def test_bradley_terry_and_accuracy_by_hand():
    c, r = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert float(bradley_terry_loss(c, r)) == pytest.approx(expected)
    assert pairwise_accuracy([1.0, 0.0, 3.0], [0.5, 0.0, 4.0]) == pytest.approx(1 / 3)  # ties lose


def test_load_pairs_reports_the_bad_line(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n\n"
                 + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:3: .*prompt, chosen, rejected"):
        load_pairs(p)
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert load_pairs(p) == [Pair("q", "a", "b")]
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    data = out / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(vars(p)) for p in make_pairs(48, seed=1)))
    cfg = RewardConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(out / "model"), epochs=2,
                       batch_size=8, lr=2e-3, eval_fraction=0.0, max_length=96, device="cpu", seed=0)
    torch.manual_seed(0)  # the same score-head init train_reward_model draws
    before = RewardModel.from_base(str(tiny_model_dir), device="cpu")
    held_out = make_pairs(40, seed=2)
    result = train_reward_model(cfg, eval_pairs=held_out)
    return {"cfg": cfg, "result": result, "held_out": held_out, "untrained": before}


def test_reward_model_learns_separable_preferences(trained_rm):
    result, held_out = trained_rm["result"], trained_rm["held_out"]
    assert result["steps"] == 2 * 6 and result["eval_pairs"] == 40
    assert result["eval_accuracy"] > 0.9
    meta = json.loads((Path(trained_rm["cfg"].output_dir) / "reward_model.json").read_text())
    history = meta["loss_history"]
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3  # the loss went down
    prompts = [p.prompt for p in held_out]

    def margin(rm):
        chosen, rejected = rm.score(prompts, [p.chosen for p in held_out]), rm.score(prompts, [p.rejected for p in held_out])
        return sum(c - r for c, r in zip(chosen, rejected)) / len(held_out)

    trained = RewardModel.load(trained_rm["cfg"].output_dir, device="cpu")
    assert margin(trained) > margin(trained_rm["untrained"]) + 1.0


def test_saved_reward_model_is_a_reward_function(trained_rm):
    rm = RewardModel.load(trained_rm["cfg"].output_dir, device="cpu")
    assert rm.model.config.num_labels == 1 and rm.model.config.pad_token_id is not None
    pairs = trained_rm["held_out"][:6]
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    scores = rm(completions, [""] * 12, prompts=prompts)
    assert len(scores) == 12 and all(c > r for c, r in zip(scores[:6], scores[6:]))
    # batching and padding do not change a score
    alone = rm.score(prompts[:1], completions[:1])
    assert alone[0] == pytest.approx(scores[0], abs=1e-4)


@pytest.mark.filterwarnings("ignore::sandbox.SandboxDegraded")
def test_grpo_step_with_reward_model_mixed_with_verifiable_reward(trained_rm, tiny_model_dir, tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {a}*{b}?", "answer": str(a * b)})
                              for a, b in [(3, 4), (5, 6), (7, 8)]))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    grpo.add_parser(sub)
    reward.add_parser(sub)
    ns = parser.parse_args(["grpo", "--model", str(tiny_model_dir), "--tasks", str(data), "--steps", "5",
                            "--reward-model", trained_rm["cfg"].output_dir, "--reward-model-weight", "0.5",
                            "--reward-model-max-steps", "1", "--rewards", "accuracy:1", "--kl-coef", "0.1",
                            "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "10",
                            "--output-dir", str(tmp_path / "rlhf"), "--no-progress", "--device", "cpu"])
    assert ns.func(ns) == 0
    with open(tmp_path / "rlhf" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1"]  # capped by --reward-model-max-steps
    row = rows[0]
    assert float(row["reward/accuracy"]) == 0.0  # a random model does not answer
    assert float(row["reward/reward_model"]) != 0.0  # ... but the learned reward scores every episode
    assert float(row["reward_mean"]) == pytest.approx(0.5 * float(row["reward/reward_model"]))


def test_rm_cli_parses_into_config(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    reward.add_parser(sub)
    ns = parser.parse_args(["rm", "--data", "x.jsonl", "--epochs", "2", "--lr", "1e-4"])
    assert ns.func is reward._cli
    assert (ns.data, ns.epochs, ns.lr) == ("x.jsonl", 2, 1e-4)
