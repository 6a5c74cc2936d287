"""A learned reward model for RLHF: ``train_reward_model(RewardConfig(...))`` or ``agent train rm``.

The model is a small LM with a one-output sequence-classification head (the score is read at the
last non-pad token). It is trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``
on preference pairs from a JSONL file of ``{"prompt", "chosen", "rejected"}`` records, and reports
pairwise accuracy on held-out pairs. ``RewardModel`` then scores episodes as a reward function
``(completions, answers, prompts=..., **kw) -> list[float]``, so ``agent train grpo --reward-model DIR``
uses it alone or mixed with verifiable rewards. See docs/rl.md for why such runs stay short.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends import resolve_model
from agent.backends.transformers import gguf_to_hf_dir
from agent.config import add_arguments, dump_config, from_args
from agent.errors import ConfigError, DataError, ModelNotFound, require

__all__ = [
    "Pair",
    "RewardConfig",
    "RewardModel",
    "add_parser",
    "bradley_terry_loss",
    "load_pairs",
    "pairwise_accuracy",
    "train_reward_model",
]

log = logging.getLogger("splice.reward")


@dataclass
class RewardConfig:
    model: str = field(default="default", metadata={"help": "base LM: 'default' (SmolLM2 GGUF), a .gguf or a HF dir"})
    data: str = field(default="", metadata={"help": "JSONL of {prompt, chosen, rejected} preference pairs"})
    eval_data: str = field(default="", metadata={"help": "held-out pairs (default: eval_fraction of --data)"})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of --data held out when no --eval-data"})
    output_dir: str = field(default="runs/rm", metadata={"help": "the trained reward model is saved here"})
    epochs: int = field(default=1, metadata={"help": "passes over the training pairs"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = all epochs)"})
    batch_size: int = field(default=8, metadata={"help": "pairs per optimizer step"})
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=512, metadata={"help": "tokens per (prompt, response); the head is cut"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16"})
    seed: int = field(default=0, metadata={"help": "seed for the split, shuffling and head init"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("eval_fraction must be in [0, 1)")
        if self.lr <= 0 or self.max_steps < 0:
            raise ConfigError("lr must be > 0 and max_steps >= 0")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def load_pairs(path: str | Path) -> list[Pair]:
    """Preference pairs from JSONL; a missing field or a bad line raises ``DataError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"preference file not found: {p}")
    pairs = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            pairs.append(Pair(str(rec["prompt"]), str(rec["chosen"]), str(rec["rejected"])))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p}:{i}: expected a JSON object with prompt, chosen, rejected ({e!r})") from None
    if not pairs:
        raise DataError(f"{p} holds no preference pairs")
    return pairs


def bradley_terry_loss(chosen: Any, rejected: Any) -> Any:
    """``mean(-log sigmoid(chosen - rejected))``: the negative log-likelihood that chosen wins."""
    import torch

    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    if not chosen:
        return 0.0
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def _hf_dir(model: str) -> Path:
    path = resolve_model(model)
    return gguf_to_hf_dir(path) if path.suffix == ".gguf" else path


class RewardModel:
    """A sequence-classification LM that scores (prompt, response) pairs; also a reward function."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 512):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        _set_padding(model, tokenizer)

    @classmethod
    def from_base(cls, model: str, device: str = "auto", dtype: str = "float32", max_length: int = 512) -> RewardModel:
        """A fresh score head (``num_labels=1``) on a base LM."""
        return cls._load(_hf_dir(model), device, dtype, max_length)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "float32") -> RewardModel:
        """A reward model saved by ``save`` (``agent train rm``)."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise ModelNotFound(f"no reward model in {path} (train one with `agent train rm`)")
        meta = json.loads((path / "reward_model.json").read_text()) if (path / "reward_model.json").exists() else {}
        return cls._load(path, device, dtype, int(meta.get("max_length", 512)))

    @classmethod
    def _load(cls, path: Path, device: str, dtype: str, max_length: int) -> RewardModel:
        torch = require("torch", "torch")
        transformers = require("transformers", "torch")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=getattr(torch, dtype))
        return cls(model.to(device), tok, max_length)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def text(self, prompt: str, response: str) -> str:
        """The pair as the model reads it: the chat template when the tokenizer has one."""
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        return f"{prompt}\n{response}"

    def forward(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        """Scores ``[N]`` with autograd (for training)."""
        enc = self.tokenizer([self.text(p, r) for p, r in zip(prompts, responses)], return_tensors="pt",
                             padding=True, truncation=True, max_length=self.max_length)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return self.model(**enc).logits[:, 0].float()

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> list[float]:
        import torch

        was = self.model.training
        self.model.eval()
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                out += self.forward(prompts[i:i + batch_size], responses[i:i + batch_size]).tolist()
        self.model.train(was)
        return out

    def __call__(self, completions: Sequence[Any], answers: Sequence[Any], prompts: Sequence[str] | None = None,
                 **kw: Any) -> list[float]:
        """Reward-function form: the score of each completion (text or Trajectory) for its prompt."""
        texts = [getattr(c, "text", c) for c in completions]
        if prompts is None:
            trajs = kw.get("trajectories") or completions
            prompts = [getattr(t, "question", "") for t in trajs]
        return self.score(list(prompts), [str(t) for t in texts])

    def save(self, path: str | Path, **meta: Any) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "reward_model.json").write_text(json.dumps({"max_length": self.max_length, **meta}, indent=2))
        return path


def _set_padding(model: Any, tokenizer: Any) -> None:
    """Sequence classification needs a pad token to find each row's last real token."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"  # keep the response, cut the prompt's head
    model.config.pad_token_id = tokenizer.pad_token_id


def _split(cfg: RewardConfig, pairs: list[Pair], eval_pairs: list[Pair] | None) -> tuple[list[Pair], list[Pair]]:
    if eval_pairs is not None:
        return pairs, eval_pairs
    if cfg.eval_data:
        return pairs, load_pairs(cfg.eval_data)
    shuffled = pairs[:]
    random.Random(cfg.seed).shuffle(shuffled)
    n_eval = round(len(shuffled) * cfg.eval_fraction)
    return shuffled[n_eval:], shuffled[:n_eval]


def evaluate(rm: RewardModel, pairs: Sequence[Pair]) -> float:
    """Held-out pairwise accuracy."""
    prompts = [p.prompt for p in pairs]
    return pairwise_accuracy(rm.score(prompts, [p.chosen for p in pairs]),
                             rm.score(prompts, [p.rejected for p in pairs]))


def train_reward_model(cfg: RewardConfig, *, pairs: list[Pair] | None = None,
                       eval_pairs: list[Pair] | None = None, rm: RewardModel | None = None) -> dict[str, Any]:
    """Train with Bradley-Terry, save to ``output_dir``, return metrics (loss, eval accuracy, steps)."""
    import torch

    torch.manual_seed(cfg.seed)
    if pairs is None:
        if not cfg.data:
            raise ConfigError("no preference data: pass --data pairs.jsonl ({prompt, chosen, rejected} per line)")
        pairs = load_pairs(cfg.data)
    train, held_out = _split(cfg, pairs, eval_pairs)
    rm = rm or RewardModel.from_base(cfg.model, cfg.device, cfg.dtype, cfg.max_length)
    opt = torch.optim.AdamW([p for p in rm.model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    history, step = [], 0
    rm.model.train()
    for _ in range(cfg.epochs):
        order = train[:]
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            history.append(_train_step(rm, opt, order[i:i + cfg.batch_size]))
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if cfg.max_steps and step >= cfg.max_steps:
            break
    result = {"steps": step, "train_pairs": len(train), "eval_pairs": len(held_out),
              "final_loss": history[-1] if history else float("nan"),
              "eval_accuracy": evaluate(rm, held_out) if held_out else float("nan")}
    rm.save(cfg.output_dir, config=dump_config(cfg), metrics=result, loss_history=history)
    log.info("reward model: %s", result)
    return result


def _train_step(rm: RewardModel, opt: Any, batch: list[Pair]) -> float:
    prompts = [p.prompt for p in batch]
    scores = rm.forward(prompts + prompts, [p.chosen for p in batch] + [p.rejected for p in batch])
    loss = bradley_terry_loss(scores[: len(batch)], scores[len(batch):])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


# -- CLI ----------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Register ``rm`` on the ``agent train`` subparsers."""
    p = subparsers.add_parser("rm", help="train a reward model on preference pairs (Bradley-Terry)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", dest="config_file", default="", help="JSON file of RewardConfig fields (flags win)")
    add_arguments(p, RewardConfig)
    p.set_defaults(func=_cli)


def _cli(ns: argparse.Namespace) -> int:
    cfg = from_args(RewardConfig, ns)
    result = train_reward_model(cfg)
    print(f"reward model saved to {cfg.output_dir}: held-out pairwise accuracy {result['eval_accuracy']:.3f} "
          f"on {result['eval_pairs']} pairs after {result['steps']} steps")
    return 0
