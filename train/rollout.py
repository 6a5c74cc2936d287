"""Rollouts for RL: the runtime plays episodes, training reads their tokens and masks.

Episodes come from ``Agent.run`` (the same loop, backends and tools as inference): each prompt is
played ``group_size`` times with distinct seeds, concurrently through ``agent.concurrency.map_bounded``.
An episode that raises (a backend or tool bug) does not lose the batch: it comes back as a *failed*
``Episode`` (``error`` set, an empty trajectory, no loss, left out of its group's baseline) with a
logged warning, and the others finish. ``pack`` turns the trajectories into right-padded tensors
whose ``loss_mask`` is the Trajectory's own (model tokens 1; prompt and spliced tool results 0),
shifted to the positions that predict each token. The records of a run live here too:
``TraceWriter`` keeps every episode as one JSON line; ``plot_rewards`` draws the reward curve that
``train.runlog.MetricsLog`` keeps beside ``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.concurrency import map_bounded
from agent.runtime import Agent
from agent.trajectory import Trajectory

__all__ = ["METRIC_FIELDS", "Episode", "Packed", "TraceWriter", "pack", "plot_rewards", "rollout_groups",
           "rollout_mode"]

log = logging.getLogger("splice.rollout")


@dataclass
class Episode:
    """One sampled episode with what training attaches to it."""

    prompt_index: int  # index into the step's prompts
    sample: int  # 0 .. group_size - 1
    question: str
    answer: Any
    trajectory: Trajectory
    reward: float = 0.0
    rewards: dict[str, float] = field(default_factory=dict)
    advantage: float = 0.0
    void: bool = False  # left out of the loss
    error: str = ""  # set when the episode raised instead of finishing: no loss, no baseline

    @property
    def failed(self) -> bool:
        return bool(self.error)


async def rollout_groups(agent: Agent, tasks: Sequence[tuple[str, Any]], group_size: int, *, seed: int,
                         concurrency: int = 16) -> list[Episode]:
    """Play every task ``group_size`` times; episodes come back grouped (task-major order), one per
    (task, sample), failed ones included. Sample ``g`` of task ``i`` uses seed ``seed + i * group_size + g``."""
    keys = [(i, g) for i in range(len(tasks)) for g in range(group_size)]

    async def one(key: tuple[int, int]) -> Trajectory:
        i, g = key
        return await agent.run(tasks[i][0], seed=seed + i * group_size + g)

    results = await map_bounded(one, keys, concurrency)
    return [_episode(i, g, tasks[i], r) for (i, g), r in zip(keys, results)]


def _episode(i: int, g: int, task: tuple[str, Any], result: Trajectory | Exception) -> Episode:
    question, answer = task
    traj = Trajectory.failed(question, result) if isinstance(result, Exception) else result
    if traj.stop_reason != "error":
        return Episode(i, g, question, answer, traj)
    error = str(traj.meta.get("error") or "episode failed")
    log.warning("episode %d/%d (%.60r) failed, left out of the loss: %s", i, g, question, error)
    return Episode(i, g, question, answer, traj, void=True, error=error)


@contextlib.contextmanager
def rollout_mode(model: Any) -> Iterator[None]:
    """Sample from the live policy: eval mode (no dropout) and no autograd; train mode after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@dataclass
class Packed:
    """Right-padded batch. ``loss_mask[b, t]`` weights the log-prob of token ``t + 1`` (predicted at
    position ``t``), so it lines up with ``logits[:, :-1]``."""

    input_ids: Any  # LongTensor [B, T]
    attention_mask: Any  # LongTensor [B, T]
    loss_mask: Any  # FloatTensor [B, T - 1]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def slice(self, start: int, stop: int) -> Packed:
        """Rows ``start:stop``, trimmed to their longest sequence."""
        width = int(self.attention_mask[start:stop].sum(-1).max())
        return Packed(self.input_ids[start:stop, :width], self.attention_mask[start:stop, :width],
                      self.loss_mask[start:stop, : width - 1])

    def to(self, device: Any) -> Packed:
        return Packed(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


def pack(trajectories: Sequence[Trajectory], pad_id: int, void: Sequence[bool] | None = None) -> Packed:
    """Tensors from trajectories. A void episode keeps its row but gets an all-zero loss mask."""
    import torch

    width = max(len(t.token_ids) for t in trajectories)
    n = len(trajectories)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, max(width - 1, 0)), dtype=torch.float32)
    for b, t in enumerate(trajectories):
        tok, m = t.token_ids, t.loss_mask()
        ids[b, : len(tok)] = torch.tensor(tok, dtype=torch.long)
        attn[b, : len(tok)] = 1
        if not (void and void[b]) and len(tok) > 1:
            mask[b, : len(tok) - 1] = torch.tensor(m[1:], dtype=torch.float32)
    return Packed(ids, attn, mask)


class TraceWriter:
    """Appends one JSON line per episode: step, group, sample, rewards, advantage, the trajectory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, episodes: Sequence[Episode]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for e in episodes:
                row = {"step": step, "prompt_index": e.prompt_index, "sample": e.sample, "answer": e.answer,
                       "reward": e.reward, "rewards": e.rewards, "advantage": e.advantage, "void": e.void,
                       "error": e.error, "trajectory": e.trajectory.to_dict()}
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after ``step`` (written after the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        tmp = self.path.with_suffix(".tmp")
        with self.path.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() and json.loads(line)["step"] <= step:
                    dst.write(line)
        tmp.replace(self.path)


# -- run records: the reward curve ------------------------------------------------------------------------
METRIC_FIELDS = ("step", "reward_mean", "reward_std", "accuracy", "tool_calls", "tool_errors", "response_len",
                 "void_frac", "failed", "zero_std_groups", "loss", "kl", "clip_frac", "grad_norm", "rollout_s",
                 "step_s")


def plot_rewards(rows: list[dict[str, Any]], path: Path) -> Path:
    """Reward (mean and std band) and accuracy against step (``train.runlog.MetricsLog``'s PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [float(r["step"]) for r in rows]
    mean = [float(r["reward_mean"]) for r in rows]
    std = [float(r.get("reward_std", 0.0)) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, mean, marker="o", label="reward (mean)")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.plot(steps, [float(r["accuracy"]) for r in rows], marker="s", label="accuracy")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
