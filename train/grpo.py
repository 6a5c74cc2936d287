"""GRPO on real multi-turn tool rollouts: ``train_grpo(GRPOConfig(...))`` or ``agent train grpo``.

One step: sample ``prompts_per_step`` tasks; the runtime plays each ``group_size`` times from the
policy's current weights (``TransformersBackend`` over the live model, eval mode, no grad), tools
executing for real; plain reward functions score the episodes; advantages are normalised within each
group; then ``epochs`` optimisation passes of the PPO-style clipped objective, token-level, over the
Trajectory's own loss mask (tool results and prompt tokens never get loss), with an optional KL
penalty to the reference model (the base weights: with LoRA, the adapter switched off).

Log-probs. Every forward of the optimisation (old, reference and the live policy's with gradient)
runs in eval mode, like the rollouts: dropout (the model's own, ``lora_dropout``) is off throughout
GRPO, so the importance ratio measures only how the weights moved, and is exactly 1 in the first
epoch. They are the log-probs of the sampled tokens at the sampling temperature under the
*untruncated* distribution: ``top_p`` (and top-k) shape which tokens rollouts sample, but old, new
and reference log-probs all ignore the truncation alike, so the ratio compares like with like (the
common choice, as in TRL; the nucleus renormalisation would make a token that leaves the new nucleus
a -inf log-prob). Episodes that raised during rollout (``Episode.failed``) get no loss and are left
out of their group's mean and std.

Outputs under ``output_dir``: ``config.json``, ``metrics.csv`` (one row per step), ``rewards.png``,
``rollouts.jsonl`` (every episode), ``checkpoints/step-N/state.pt`` (trainable weights, optimizer,
step; ``--resume`` continues at N+1), ``final/`` (``save_pretrained``), ``tensorboard/`` if tensorboard is
installed. See docs/rl.md.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.backends import resolve_model
from agent.backends.transformers import TransformersBackend, load_hf
from agent.config import add_arguments, dump_config, from_args
from agent.errors import ConfigError, require
from agent.evals.data import load_examples
from agent.evals.tasks import generate_mix, parse_spec
from agent.runtime import Agent, RuntimeConfig
from train import checkpoint
from train.export import adapter_dir
from train.reward import RewardModel
from train.rewards import RewardTerm, accuracy_reward, is_void, parse_rewards, score
from train.rollout import METRIC_FIELDS, Episode, TraceWriter, pack, plot_rewards, rollout_groups, rollout_mode
from train.runlog import MetricsLog, StepProgress

__all__ = [
    "GRPOConfig",
    "GRPOTrainer",
    "add_parser",
    "group_advantages",
    "grpo_loss",
    "logprobs_from_logits",
    "rollout_backend",
    "train_grpo",
]

log = logging.getLogger("splice.grpo")


def rollout_config(**overrides: Any) -> RuntimeConfig:
    """GRPO's defaults for the rollouts' runtime: python only, sampled (temperature 1), short episodes."""
    return RuntimeConfig(**{"tools": ["python"], "temperature": 1.0, "max_new_tokens": 256, "max_tool_calls": 3,
                            "max_result_tokens": 128, **overrides})


@dataclass
class GRPOConfig:
    model: str = field(default="default", metadata={"help": "policy: 'default' (SmolLM2 GGUF), a .gguf or a HF dir"})
    output_dir: str = field(default="runs/grpo", metadata={"help": "metrics, traces, checkpoints go here"})
    tasks: str = field(default="arith,count", metadata={"help": "task families (agent.evals.tasks) or a dataset file"})
    n_tasks: int = field(default=512, metadata={"help": "tasks generated per family list (ignored for files)"})
    steps: int = field(default=20, metadata={"help": "optimisation steps (each one batch of rollouts)"})
    prompts_per_step: int = field(default=4, metadata={"help": "distinct prompts per step"})
    group_size: int = field(default=4,
                            metadata={"help": "G: samples per prompt (advantages are relative to the group)"})
    epochs: int = field(default=1, metadata={"help": "optimisation passes per batch; >1 makes the clipped ratio bite"})
    micro_batch: int = field(default=4, metadata={"help": "episodes per forward/backward (gradient accumulation)"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip: ratio kept in [1-eps, 1+eps_high]"})
    clip_eps_high: float = field(default=0.0, metadata={"help": "upper clip (0 = clip_eps; DAPO uses 0.28)"})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty to the reference model (k3 estimator)"})
    loss_norm: str = field(default="token", metadata={"help": "token (mean over all loss tokens) | sequence"})
    scale_rewards: bool = field(default=True, metadata={"help": "divide advantages by the group's reward std"})
    mask_void: bool = field(default=True, metadata={"help": "no loss for episodes with malformed calls or void turns"})
    rewards: str = field(default="accuracy:1,format:0.2", metadata={"help": "name:weight,... (accuracy, exact, f1, "
                                                                     "format, tool_bonus, tool_cost)"})
    reward_model: str = field(default="", metadata={"help": "reward model dir from `agent train rm` (adds a term)"})
    reward_model_weight: float = field(default=1.0, metadata={"help": "weight of the reward model's score"})
    reward_model_max_steps: int = field(default=50, metadata={"help": "step cap when a reward model is used"})
    lora: bool = field(default=True, metadata={"help": "train a LoRA adapter (else all weights)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    init_adapter: str = field(default="", metadata={
        "help": "start from this LoRA adapter (an `agent train sft` output dir or its adapter/) and train it "
                "further, instead of a fresh one; the reference model is still the base (adapter off)"})
    rollout: RuntimeConfig = field(default_factory=lambda: rollout_config(), metadata={
        "flatten": True, "skip": ("model", "llm", "seed"),
        "help": "the rollouts' runtime (tools, syntax, sampling, limits); flags at top level"})
    concurrency: int = field(default=16, metadata={"help": "episodes played at once"})
    rollout_backend: str = field(default="transformers", metadata={"help": "transformers (one sequence per "
                                 "forward) | batched (continuous batching over --concurrency slots; GPU)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16"})
    seed: int = field(default=0, metadata={"help": "seed for init, task order and sampling"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: bool = field(default=True, metadata={"help": "continue from the latest checkpoint in output_dir "
                                                          "when there is one"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if isinstance(self.rollout, dict):
            self.rollout = rollout_config(**self.rollout)
        for name in ("steps", "prompts_per_step", "group_size", "epochs", "micro_batch",
                     "save_every", "concurrency", "keep_checkpoints", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.group_size < 2:
            raise ConfigError("group_size must be >= 2: GRPO compares samples of the same prompt")
        if self.rollout_backend not in ("transformers", "batched"):
            raise ConfigError(f"rollout_backend must be 'transformers' or 'batched' (got {self.rollout_backend!r})")
        if self.loss_norm not in ("token", "sequence"):
            raise ConfigError(f"loss_norm must be 'token' or 'sequence' (got {self.loss_norm!r})")
        if not 0 < self.clip_eps < 1 or self.clip_eps_high < 0:
            raise ConfigError("clip_eps must be in (0, 1) and clip_eps_high >= 0")
        if self.kl_coef < 0 or self.lr <= 0:
            raise ConfigError("kl_coef must be >= 0 and lr > 0")
        if not self.rewards.strip() and not self.reward_model:
            raise ConfigError("no reward: set --rewards (e.g. accuracy:1) or --reward-model")
        if self.reward_model and self.reward_model_max_steps < 1:
            raise ConfigError("reward_model_max_steps must be >= 1")
        parse_rewards(self.rewards or "format", extra={"reward_model": lambda *a, **k: []})

    @property
    def total_steps(self) -> int:
        """``steps``, capped by ``reward_model_max_steps`` when a learned reward is optimised."""
        return min(self.steps, self.reward_model_max_steps) if self.reward_model else self.steps

    def runtime(self) -> RuntimeConfig:
        """The rollouts' runtime config, seeded with the run's seed."""
        return replace(self.rollout, seed=self.seed)


# -- the math -------------------------------------------------------------------------------------
def group_advantages(rewards: Any, group_size: int, scale: bool = True, eps: float = 1e-4,
                     valid: Any = None) -> Any:
    """``(r - mean_group) / (std_group + eps)`` with the unbiased std (``scale=False``: no division);
    a group without spread gets 0. ``rewards`` is flat, grouped: entries ``[i*G, (i+1)*G)`` share a
    prompt. Entries where ``valid`` is false (failed episodes) are left out of their group's mean and
    std and get 0."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32).view(-1, group_size)
    v = torch.ones_like(r) if valid is None else torch.as_tensor(valid, dtype=torch.float32).view_as(r)
    n = v.sum(dim=1, keepdim=True)
    adv = (r - (r * v).sum(dim=1, keepdim=True) / n.clamp(min=1)) * v
    if scale:
        std = ((adv ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        adv = torch.where(std > 0, adv / (std + eps), torch.zeros_like(adv))
    return adv.flatten()


def logprobs_from_logits(logits: Any, input_ids: Any, temperature: float = 1.0) -> Any:
    """Log-prob of each next token: ``out[b, t] = log p(input_ids[b, t+1] | ...)`` from
    ``logits[b, t]``, at the sampling temperature. Shape ``[B, T-1]``."""
    import torch

    x = logits[:, :-1].float()
    if temperature not in (0.0, 1.0):
        x = x / temperature
    target = input_ids[:, 1:].unsqueeze(-1)
    return (x.gather(-1, target).squeeze(-1) - torch.logsumexp(x, dim=-1))


def grpo_loss(logp: Any, old_logp: Any, advantages: Any, mask: Any, *, clip_low: float = 0.2,
              clip_high: float | None = None, ref_logp: Any = None, kl_coef: float = 0.0,
              norm: str = "token", denom: float | None = None) -> tuple[Any, dict[str, float]]:
    """Clipped surrogate + ``kl_coef`` * k3 KL, summed over ``mask`` tokens and divided by ``denom``
    (token norm: the batch's loss tokens; sequence norm: its sequences, each averaged over its tokens).
    Returns the loss and sums for metrics: tokens, clipped tokens, KL."""
    import torch

    clip_high = clip_low if clip_high is None else clip_high
    live = mask > 0
    zero = torch.zeros_like(logp)
    # masked positions are zeroed BEFORE exp: a huge ratio there would turn 0 * inf into a NaN gradient
    ratio = torch.exp(torch.where(live, logp - old_logp, zero))
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_tok = -torch.minimum(unclipped, clipped)
    kl = zero
    if ref_logp is not None and kl_coef:
        d = torch.where(live, ref_logp - logp, zero)
        kl = torch.exp(d) - d - 1
        per_tok = per_tok + kl_coef * kl
    per_tok = torch.where(live, per_tok, zero)
    if norm == "sequence":
        per_seq = per_tok.sum(-1) / mask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / (denom if denom else max(int((mask.sum(-1) > 0).sum()), 1))
    else:
        loss = per_tok.sum() / (denom if denom else max(float(mask.sum()), 1.0))
    with torch.no_grad():
        is_clipped = ((ratio > 1 + clip_high) & (adv > 0)) | ((ratio < 1 - clip_low) & (adv < 0))
        stats = {"tokens": float(live.sum()), "clipped": float((is_clipped & live).sum()),
                 "kl": float(torch.where(live, kl, zero).sum())}
    return loss, stats


# -- tasks and model --------------------------------------------------------------------------------
def load_tasks(cfg: GRPOConfig) -> list[tuple[str, list[str]]]:
    """(question, gold aliases) pairs from a dataset file or generated task families."""
    if Path(cfg.tasks).is_file():
        examples = load_examples(cfg.tasks)
    else:
        families, phrasing = parse_spec(cfg.tasks)
        if "@" not in cfg.tasks:
            phrasing = "train"  # held-out phrasings stay out of training unless asked for by name
        examples = generate_mix(families, cfg.n_tasks, cfg.seed, phrasing)
    return [(e.question, e.golds) for e in examples]


def _load_policy(cfg: GRPOConfig) -> tuple[Any, Any]:
    return load_hf(resolve_model(cfg.model), cfg.device, cfg.dtype)


def _with_lora(model: Any, cfg: GRPOConfig) -> Any:
    peft = require("peft", "torch")
    if cfg.init_adapter:  # continue training a LoRA adapter (e.g. SFT's): its own rank and targets
        adir = adapter_dir(cfg.init_adapter)
        if adir is None:
            raise ConfigError(f"--init-adapter {cfg.init_adapter}: no adapter_config.json there or in adapter/")
        return peft.PeftModel.from_pretrained(model, str(adir), is_trainable=True)
    conf = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, conf)


def rollout_backend(cfg: GRPOConfig) -> Callable[[Any, Any], Any]:
    """A factory ``(policy, tokenizer) -> Backend`` over the live policy weights (never a copy)."""

    def single(model: Any, tokenizer: Any) -> Any:
        return TransformersBackend(model=model, tokenizer=tokenizer)

    def batched(model: Any, tokenizer: Any) -> Any:
        from agent.backends.batched import BatchedTransformersBackend  # lazy: heavy (torch)

        # The batched runner walks ``model.model.layers``; under peft that is the base model, whose
        # Linear modules now carry the LoRA branches. CUDA graphs stay off: they would have to be
        # re-validated after every optimizer step.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return BatchedTransformersBackend(model=base, tokenizer=tokenizer, max_batch=cfg.concurrency,
                                          cuda_graphs=False)

    return batched if cfg.rollout_backend == "batched" else single


def _reward_terms(cfg: GRPOConfig, device: Any) -> list[RewardTerm]:
    extra: dict[str, Any] = {}
    spec = cfg.rewards
    if cfg.reward_model:
        extra["reward_model"] = RewardModel.load(cfg.reward_model, device=str(device))
        spec = f"{spec},reward_model:{cfg.reward_model_weight}" if spec.strip() else \
            f"reward_model:{cfg.reward_model_weight}"
    return parse_rewards(spec, extra)


# -- the trainer --------------------------------------------------------------------------------------
class GRPOTrainer:
    """Holds the policy, optimizer and logs; ``train()`` runs the steps. ``model``/``tokenizer``,
    ``tasks``, ``reward_terms`` and ``backend_factory(model, tokenizer) -> Backend`` may be injected
    (tests, other backends); otherwise they come from ``cfg``."""

    def __init__(self, cfg: GRPOConfig, *, model: Any = None, tokenizer: Any = None,
                 tasks: Sequence[tuple[str, Any]] | None = None, reward_terms: list[RewardTerm] | None = None,
                 backend_factory: Callable[[Any, Any], Any] | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None):
        import torch

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if model is None:
            model, tokenizer = _load_policy(cfg)
        self.tokenizer = tokenizer
        self.model = _with_lora(model, cfg) if cfg.lora else model
        self.device = next(self.model.parameters()).device
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef and not cfg.lora else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.tasks = list(tasks) if tasks is not None else load_tasks(cfg)
        if not self.tasks:
            raise ConfigError(f"no tasks in {cfg.tasks!r}")
        self.terms = reward_terms if reward_terms is not None else _reward_terms(cfg, self.device)
        self.backend_factory = backend_factory or rollout_backend(cfg)
        self.on_step = on_step
        self.out = Path(cfg.output_dir)
        self.temperature = cfg.rollout.temperature or 1.0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.start_step = 1

    # -- setup / resume -------------------------------------------------------------------------
    def _prepare_outputs(self) -> MetricsLog:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(dump_config(self.cfg), indent=2))
        done = 0
        ckpt = checkpoint.latest(self.out / "checkpoints") if self.cfg.resume else None
        if ckpt is not None:
            done, _ = checkpoint.load(ckpt, self.model, self.optimizer)
            log.info("resumed from %s (step %d)", ckpt, done)
        self.start_step = done + 1
        self.traces = TraceWriter(self.out / "rollouts.jsonl")
        self.traces.truncate_after(done)
        fields = [*METRIC_FIELDS, *(f"reward/{t.name}" for t in self.terms)]
        kept = [r for r in MetricsLog.read(self.out / "metrics.csv") if float(r["step"]) <= done]
        return MetricsLog(self.out, fields, kept, prefix="grpo", png="rewards.png", plot=plot_rewards, plot_every=1)

    def _agent(self) -> Agent:
        backend = self.backend_factory(self.model, self.tokenizer)
        return Agent(backend, tools=list(self.cfg.rollout.tools), syntax=self.cfg.rollout.syntax,
                     config=self.cfg.runtime())

    # -- public ---------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        """Run from the first step not done yet to ``total_steps``; returns this run's metric rows."""
        metrics = self._prepare_outputs()
        rows: list[dict[str, float]] = []
        last = self.cfg.total_steps
        bar_ = StepProgress("grpo", last, self.start_step - 1, self.cfg.progress)
        with asyncio.Runner() as runner, metrics, bar_ as bar:
            agent = self._agent()
            try:
                for step in range(self.start_step, last + 1):
                    row = self.step(runner, agent, step)
                    rows.append(row)
                    metrics.append(row)
                    bar(step, f"reward {row['reward_mean']:.3f} acc {row['accuracy']:.2f} "
                        f"calls {row['tool_calls']:.1f}")
                    if self.on_step is not None:
                        self.on_step(step, row)
                    if step % self.cfg.save_every == 0 or step == last:
                        self.save_checkpoint(step)
            finally:
                runner.run(agent.aclose())
                runner.run(agent.backend.aclose())  # the Agent closes only a backend it loaded itself
        self.save_final()
        return rows

    def save_checkpoint(self, step: int) -> Path:
        """``checkpoints/step-N/`` (``train.checkpoint``); only the last ``keep_checkpoints`` stay."""
        root = self.out / "checkpoints"
        path = checkpoint.save(root / f"step-{step:06d}", step, checkpoint.trainable_state(self.model),
                               self.optimizer, meta={"config": dump_config(self.cfg)})
        checkpoint.prune(root, self.cfg.keep_checkpoints)
        return path

    def save_final(self) -> Path:
        path = self.out / "final"
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def step(self, runner: asyncio.Runner, agent: Agent, step: int) -> dict[str, float]:
        """One GRPO step: rollouts, rewards, advantages, optimisation. Returns the metric row."""
        t0 = time.perf_counter()
        tasks = self._tasks_for(step)
        n = len(tasks) * self.cfg.group_size
        with rollout_mode(self.model):
            episodes = runner.run(rollout_groups(agent, tasks, self.cfg.group_size,
                                                 seed=self.cfg.seed + (step - 1) * n,
                                                 concurrency=self.cfg.concurrency))
        t_roll = time.perf_counter() - t0
        parts = self._score(episodes)
        stats = self._optimise(episodes)
        self.traces.write(step, episodes)
        return _metrics_row(step, episodes, parts, stats, self.cfg.group_size,
                            {"rollout_s": t_roll, "step_s": time.perf_counter() - t0})

    # -- pieces of a step -----------------------------------------------------------------------
    def _tasks_for(self, step: int) -> list[tuple[str, Any]]:
        rng = random.Random(f"grpo:{self.cfg.seed}:{step}")
        k = self.cfg.prompts_per_step
        return rng.sample(self.tasks, k) if k <= len(self.tasks) else rng.choices(self.tasks, k=k)

    def _score(self, episodes: list[Episode]) -> dict[str, list[float]]:
        trajs = [e.trajectory for e in episodes]
        completions, answers = [t.text for t in trajs], [e.answer for e in episodes]
        kw = {"trajectories": trajs, "prompts": [e.question for e in episodes], "syntax": self.cfg.rollout.syntax}
        total, parts = score(self.terms, completions, answers, **kw)
        parts = {"accuracy_metric": accuracy_reward(completions, answers, **kw), **parts}
        ok = [not e.failed for e in episodes]
        adv = group_advantages(total, self.cfg.group_size, self.cfg.scale_rewards, valid=ok).tolist()
        for i, e in enumerate(episodes):
            e.reward, e.advantage = total[i], adv[i]
            e.rewards = {k: v[i] for k, v in parts.items()}
            e.void = e.failed or (self.cfg.mask_void and is_void(e.trajectory))
        return parts

    def _logp(self, batch: Any, model: Any = None) -> Any:
        """Sampled tokens' log-probs at the sampling temperature, untruncated (module docstring)."""
        out = (model or self.model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return logprobs_from_logits(out.logits, batch.input_ids, self.temperature)

    def behaviour_logp(self, batch: Any) -> Any:
        """The old (behaviour) policy's log-probs: the live weights in eval mode, no grad, as sampled."""
        with rollout_mode(self.model):
            return self._logp(batch)

    def _reference_logp(self, batch: Any) -> Any:
        with rollout_mode(self.model):
            if self.ref is not None:
                return self._logp(batch, self.ref)
            with self.model.disable_adapter():
                return self._logp(batch)

    def _optimise(self, episodes: list[Episode]) -> dict[str, float]:
        import torch

        cfg = self.cfg
        sums = {"tokens": 0.0, "clipped": 0.0, "kl": 0.0, "loss": 0.0, "grad_norm": 0.0, "epochs": cfg.epochs}
        batch = pack([e.trajectory for e in episodes], self.pad_id, [e.void for e in episodes]).to(self.device)
        if not float(batch.loss_mask.sum()):
            return sums  # every episode void or failed: nothing to learn from this batch
        adv = torch.tensor([e.advantage for e in episodes], dtype=torch.float32, device=self.device)
        spans = [(a, min(a + cfg.micro_batch, len(batch))) for a in range(0, len(batch), cfg.micro_batch)]
        denom = float(batch.loss_mask.sum()) if cfg.loss_norm == "token" else float((batch.loss_mask.sum(-1) > 0).sum())
        old = [self.behaviour_logp(batch.slice(a, b)) for a, b in spans] if cfg.epochs > 1 else None
        ref = [self._reference_logp(batch.slice(a, b)) for a, b in spans] if cfg.kl_coef else None
        self.model.eval()  # no dropout in the gradient pass either (module docstring)
        for _ in range(cfg.epochs):
            for j, (a, b) in enumerate(spans):
                mb = batch.slice(a, b)
                logp = self._logp(mb)
                loss, st = grpo_loss(logp, old[j] if old else logp.detach(), adv[a:b], mb.loss_mask,
                                     clip_low=cfg.clip_eps, clip_high=cfg.clip_eps_high or None,
                                     ref_logp=ref[j] if ref else None, kl_coef=cfg.kl_coef,
                                     norm=cfg.loss_norm, denom=max(denom, 1.0))
                if st["tokens"]:
                    loss.backward()
                for k in ("tokens", "clipped", "kl"):
                    sums[k] += st[k]
                sums["loss"] += float(loss.detach())
            sums["grad_norm"] += self._apply_gradients()
        return sums

    def _apply_gradients(self) -> float:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def _metrics_row(step: int, episodes: list[Episode], parts: dict[str, list[float]], st: dict[str, float],
                 group_size: int, timing: dict[str, float]) -> dict[str, float]:
    import statistics

    ok = [i for i, e in enumerate(episodes) if not e.failed] or list(range(len(episodes)))
    rewards = [episodes[i].reward for i in ok]
    groups = [[e.reward for e in episodes[i:i + group_size] if not e.failed]
              for i in range(0, len(episodes), group_size)]
    groups = [g for g in groups if g] or [[0.0]]
    trajs = [e.trajectory for e in episodes]
    tokens = max(st["tokens"], 1.0)
    row = {
        "step": step,
        "reward_mean": statistics.fmean(rewards),
        "reward_std": statistics.pstdev(rewards),
        "accuracy": statistics.fmean(parts["accuracy_metric"][i] for i in ok),
        "failed": sum(e.failed for e in episodes),
        "tool_calls": statistics.fmean(len(t.tool_calls) for t in trajs),
        "tool_errors": statistics.fmean(sum(c.error for c in t.tool_calls) for t in trajs),
        "response_len": statistics.fmean(t.n_generated for t in trajs),
        "void_frac": statistics.fmean(e.void for e in episodes),
        "zero_std_groups": sum(1 for g in groups if max(g) == min(g)) / len(groups),
        "loss": st["loss"] / st["epochs"],
        "kl": st["kl"] / tokens,
        "clip_frac": st["clipped"] / tokens,
        "grad_norm": st["grad_norm"] / st["epochs"],
        **timing,
    }
    for name, values in parts.items():
        if name != "accuracy_metric":
            row[f"reward/{name}"] = statistics.fmean(values)
    return row


def train_grpo(cfg: GRPOConfig, **inject: Any) -> list[dict[str, float]]:
    """Library entry point: build a ``GRPOTrainer`` (``inject`` passes its keyword options) and train."""
    return GRPOTrainer(cfg, **inject).train()


# -- CLI ----------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    """Register ``grpo`` on the ``agent train`` subparsers."""
    p = subparsers.add_parser("grpo", help="GRPO on tool-use rollouts played by the runtime",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", dest="config_file", default="", help="JSON file of GRPOConfig fields (flags win)")
    add_arguments(p, GRPOConfig)
    p.set_defaults(func=_cli)


def _cli(ns: argparse.Namespace) -> int:
    cfg = from_args(GRPOConfig, ns)
    rows = train_grpo(cfg)
    if rows:
        last = rows[-1]
        print(f"step {int(last['step'])}: reward {last['reward_mean']:.3f}, accuracy {last['accuracy']:.3f}; "
              f"metrics in {Path(cfg.output_dir) / 'metrics.csv'}")
    return 0
