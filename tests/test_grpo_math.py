"""GRPO pieces on hand-computed cases: advantages, clipping, KL, normalisation, log-probs, packing,
reward functions. No model, no sandbox."""

import math

import pytest

torch = pytest.importorskip("torch")

from agent import Agent
from agent.backends.scripted import ScriptedBackend
from agent.errors import ConfigError
from agent.trajectory import Segment, ToolCall, Trajectory
from train.grpo import GRPOConfig, group_advantages, grpo_loss, logprobs_from_logits
from train.rewards import (
    format_reward,
    is_void,
    parse_rewards,
    score,
    tool_bonus_reward,
    tool_cost_reward,
)
from train.rollout import pack, rollout_groups


# -- advantages ------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    adv = group_advantages([1, 0, 0, 1, 2, 2, 2, 2], group_size=4, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.8660; group 2 has no spread
    expected = [0.8660254, -0.8660254, -0.8660254, 0.8660254, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_group_advantages_unscaled_and_eps():
    assert group_advantages([3, 1, 2, 2], 2, scale=False).tolist() == pytest.approx([1, -1, 0, 0])
    same = group_advantages([5.0, 5.0], 2)  # zero std: eps keeps it finite and zero
    assert same.tolist() == [0.0, 0.0]


# -- the clipped objective -------------------------------------------------------------------------
def _loss_for(ratios, advs, **kw):
    old = torch.zeros(len(ratios), 1)
    logp = torch.log(torch.tensor(ratios)).unsqueeze(-1).requires_grad_(True)
    loss, stats = grpo_loss(logp, old, torch.tensor(advs), torch.ones(len(ratios), 1), **kw)
    loss.backward()
    return loss, stats, logp.grad.squeeze(-1)


def test_clipping_by_hand():
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5]
    advs = [1.0, 1.0, -1.0, -1.0, -1.0]
    loss, stats, grad = _loss_for(ratios, advs, clip_low=0.2)
    # per-token -min(r*A, clip(r)*A): -1.2 (clipped), -0.5, 1.1, 1.5, 0.8 (clipped); mean over 5 tokens
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 1.1 + 1.5 + 0.8) / 5)
    assert stats == {"tokens": 5.0, "clipped": 2.0, "kl": 0.0}
    # d/dlogp of -r*A/5 is -r*A/5 where unclipped; exactly zero where the clipped branch is taken
    assert grad.tolist() == pytest.approx([0.0, -0.5 / 5, 1.1 / 5, 1.5 / 5, 0.0])
    assert grad[0].item() == 0.0 and grad[4].item() == 0.0


def test_clip_higher_is_asymmetric():
    _, stats, grad = _loss_for([1.25, 0.75], [1.0, -1.0], clip_low=0.2, clip_high=0.28)
    assert stats["clipped"] == 1.0  # 1.25 < 1.28 passes; 0.75 < 0.8 with A<0 is clipped
    assert grad.tolist() == pytest.approx([-1.25 / 2, 0.0])


def test_ratio_one_gives_plain_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-2.0)
    assert logp.grad.tolist() == [[-1.0, -1.0]]  # -A / n_tokens


def test_kl_k3_by_hand():
    logp = torch.tensor([[math.log(0.25), math.log(0.5)]])
    ref = torch.tensor([[math.log(0.5), math.log(0.5)]])
    loss, stats = grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    k3 = 2 - math.log(2) - 1  # exp(d) - d - 1 with d = log 2; zero on the second token
    assert stats["kl"] == pytest.approx(k3)
    assert float(loss.detach()) == pytest.approx(0.1 * k3 / 2)


def test_token_and_sequence_normalisation():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, 3.0])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    tok, _ = grpo_loss(logp, logp, adv, mask, norm="token")
    seq, _ = grpo_loss(logp, logp, adv, mask, norm="sequence")
    assert float(tok) == pytest.approx(-(1 + 3 * 3) / 4)  # every loss token weighs the same
    assert float(seq) == pytest.approx(-(1 + 3) / 2)  # every sequence weighs the same
    half, _ = grpo_loss(logp, logp, adv, mask, norm="token", denom=8)  # micro-batch of a larger batch
    assert float(half) == pytest.approx(-10 / 8)


def test_masked_tokens_have_zero_gradient_even_when_nonfinite_elsewhere():
    logp = torch.tensor([[-1.0, -50.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1e4]])  # a huge ratio at a masked position
    loss, _ = grpo_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss)
    assert logp.grad[0, 1].item() == 0.0


# -- log-probs --------------------------------------------------------------------------------------
def test_logprobs_from_logits_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    for temp in (1.0, 0.7):
        got = logprobs_from_logits(logits, ids, temp)
        ref = torch.log_softmax(logits[:, :-1] / temp, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        assert got.shape == (2, 4)
        assert torch.allclose(got, ref, atol=1e-6)


# -- packing ------------------------------------------------------------------------------------------
def _traj(*parts, calls=(), stop="answer"):
    return Trajectory("q", segments=[Segment(src, txt, ids) for src, txt, ids in parts],
                      tool_calls=list(calls), stop_reason=stop)


def test_pack_aligns_mask_with_next_token_positions():
    t1 = _traj(("prompt", "p", [1, 2]), ("model", "c", [3, 4]), ("result", "r", [5, 6]), ("model", "a", [7]))
    t2 = _traj(("prompt", "p", [1]), ("model", "a", [8, 9]))
    b = pack([t1, t2], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [1, 8, 9, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    # position t predicts token t+1: tokens 3,4 and 7 are the model's; 5,6 are the tool's
    assert b.loss_mask.tolist() == [[0, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0]]
    void = pack([t1, t2], pad_id=0, void=[True, False])
    assert void.loss_mask[0].sum() == 0 and void.loss_mask[1].sum() == 2
    sub = b.slice(1, 2)
    assert sub.input_ids.tolist() == [[1, 8, 9]] and sub.loss_mask.tolist() == [[1, 1]]


# -- rewards -------------------------------------------------------------------------------------------
CALL = ToolCall("python", "print(6*7)", "42\n")
BAD = ToolCall("", "<code_start>", "error: not closed", True, "unclosed")


def test_format_tool_and_void_rewards():
    good = _traj(("prompt", "", [1]), ("model", "<code_start>print(6*7)<code_end>", [2]),
                 ("result", "<result_start>\n<answer_start>x<answer_end>\n<result_end>\n", [3]),
                 ("model", "<answer_start>42<answer_end>", [4]), calls=[CALL])
    two = _traj(("model", "<answer_start>1<answer_end> <answer_start>2<answer_end>", [2]))
    broken = _traj(("model", "<code_start>x", [2]), ("result", "", [3]),
                   ("model", "<answer_start>1<answer_end>", [4]), calls=[BAD])
    empty_turn = _traj(("model", "<code_start>1<code_end>", [2]), ("result", "", [3]), ("model", "", [0]),
                       calls=[CALL], stop="eos")
    trajs = [good, two, broken, empty_turn]
    texts = [t.text for t in trajs]
    # answer tags inside a tool result are not the model's
    assert format_reward(texts, [""] * 4, trajectories=trajs) == [1.0, 0.0, 0.0, 0.0]
    assert tool_bonus_reward(texts, [""] * 4, trajectories=trajs) == [1.0, 0.0, 0.0, 1.0]
    assert tool_cost_reward(texts, [""] * 4, trajectories=trajs) == [-1.0, 0.0, -1.0, -1.0]
    assert [is_void(t) for t in trajs] == [False, False, True, True]


def test_parse_and_score_weighted_terms():
    terms = parse_rewards("accuracy:1,format:0.5,tool_cost:0.1")
    assert [(t.name, t.weight) for t in terms] == [("accuracy", 1.0), ("format", 0.5), ("tool_cost", 0.1)]
    t = _traj(("model", "<code_start>1<code_end>", [1]), ("result", "", [2]),
              ("model", "<answer_start>1,000<answer_end>", [3]), calls=[CALL])
    total, parts = score(terms, [t.text, "<answer_start>7<answer_end>"], ["1000", "8"],
                         trajectories=[t, _traj(("model", "<answer_start>7<answer_end>", [1]))])
    assert parts == {"accuracy": [1.0, 0.0], "format": [1.0, 1.0], "tool_cost": [-1.0, 0.0]}
    assert total == pytest.approx([1 + 0.5 - 0.1, 0.5])
    with pytest.raises(ConfigError, match="unknown reward"):
        parse_rewards("accuracy,bogus:1")
    with pytest.raises(ConfigError, match="not a number"):
        parse_rewards("accuracy:high")


def test_config_validation_says_how_to_fix():
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="loss_norm"):
        GRPOConfig(loss_norm="mean")
    with pytest.raises(ConfigError, match="unknown reward"):
        GRPOConfig(rewards="accuracy,typo")
    assert GRPOConfig(steps=500, reward_model="rm").total_steps == 50
    assert GRPOConfig(rollout={"tools": "python,search"}).rollout.tools == ["python", "search"]


# -- rollouts: one crash does not lose the batch -------------------------------------------------------
class CrashOnBoom(ScriptedBackend):
    """The scripted model, with a backend bug on one prompt: streaming for it raises."""

    async def stream(self, seq, append, params):
        if "boom" in self.decode(seq.ids + list(append)):
            raise RuntimeError("backend bug on this prompt")
        async for tok in super().stream(seq, append, params):
            yield tok


async def test_rollout_records_a_crashed_episode_and_finishes_the_rest(caplog):
    backend = CrashOnBoom(lambda context: "<answer_start>4<answer_end>")
    tasks = [("What is 2+2?", "4"), ("boom", "4"), ("And 1+3?", "4")]
    async with Agent(backend, tools=[], max_new_tokens=32) as agent:
        with caplog.at_level("WARNING", logger="splice.rollout"):
            episodes = await rollout_groups(agent, tasks, group_size=2, seed=0, concurrency=4)
    assert [(e.prompt_index, e.sample) for e in episodes] == [(i, g) for i in range(3) for g in range(2)]
    assert [e.failed for e in episodes] == [False, False, True, True, False, False]
    for e in episodes:
        if e.failed:
            assert "backend bug on this prompt" in e.error and e.void and e.trajectory.stop_reason == "error"
            assert pack([e.trajectory], pad_id=0).loss_mask.numel() == 0  # nothing to train on
        else:
            assert e.trajectory.answer == "4" and not e.void
    assert sum("backend bug on this prompt" in m for m in caplog.messages) == 2


def test_failed_episodes_are_left_out_of_their_groups_baseline():
    # group 0: one failed (its reward, 0, must not pull the mean down); group 1 intact
    adv = group_advantages([1, 1, 0, 0, 1, 0], 3, eps=0.0, valid=[True, True, False, True, True, True])
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]  # the two that ran agree: no signal, failed gets 0
    same = group_advantages([0, 1, 0], 3, eps=0.0)
    assert adv[3:].tolist() == pytest.approx(same.tolist())
    adv = group_advantages([1, 0, 5, 0], 4, eps=0.0, valid=[True, True, False, True])
    # the three that ran: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 * (1/3)^2) / 2) = 0.57735
    assert adv.tolist() == pytest.approx([1.1547005, -0.5773503, 0.0, -0.5773503], abs=1e-6)


# -- answer rewards score the model's own final answer, as evals do ----------------------------------
async def _episode_text(turns: list[str]) -> Trajectory:
    from tools.base import FunctionTool, ToolOutput

    python = FunctionTool(lambda code: ToolOutput("42\n"), name="python")  # prints the right number
    async with Agent(ScriptedBackend(turns), tools=[python], max_new_tokens=200) as agent:
        return await agent.run("What is 6*7?")


async def test_tool_output_with_the_right_number_but_no_answer_scores_zero():
    from train.rewards import accuracy_reward, exact_match_reward, f1_reward, final_answer

    silent = await _episode_text(["<code_start>print(6*7)<code_end>", ""])  # never answers
    answered = await _episode_text(["<code_start>print(6*7)<code_end>", "<answer_start>42<answer_end>"])
    wrong = await _episode_text(["<code_start>print(6*7)<code_end>", "<answer_start>41<answer_end>"])
    trajs = [silent, answered, wrong]
    assert "42" in silent.text and silent.tool_calls[0].result.strip() == "42"
    assert [final_answer(t.text, t) for t in trajs] == [None, "42", "41"]
    texts, golds = [t.text for t in trajs], ["42"] * 3
    for fn in (accuracy_reward, exact_match_reward, f1_reward):
        assert fn(texts, golds, trajectories=trajs) == [0.0, 1.0, 0.0], fn.__name__
    total, _ = score(parse_rewards("accuracy:1,format:0.2"), texts, golds, trajectories=trajs)
    assert total == pytest.approx([0.0, 1.2, 0.2])  # never answering is worth less than a wrong answer
    # the evals' own judgement of the same episodes (what `agent eval` reports)
    from agent.evals.metrics import is_correct

    assert [float(is_correct(t.answer, "42")) for t in trajs] == [0.0, 1.0, 0.0]


def test_text_completions_count_only_answer_tags():
    from train.rewards import accuracy_reward

    texts = ["<code_start>print(6*7)<code_end><result_start>\n42\n<result_end>\n",  # tool output only
             "thinking... <answer_start>42<answer_end>", "42"]
    assert accuracy_reward(texts, ["42"] * 3) == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(texts[:2], ["42"])
