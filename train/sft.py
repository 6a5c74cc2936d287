"""Supervised fine-tuning on rendered tool-use chats: LoRA (peft) or full, on CPU or GPU(s).

    from train.sft import SFTConfig, train_sft
    summary = train_sft(SFTConfig(model="default", data="data/sft.jsonl", output_dir="out/sft"))

The loop is plain PyTorch driven by ``accelerate`` (so ``accelerate launch -m agent.cli train sft``
runs it under DDP unchanged). Loss is the mean over trained tokens of a whole optimizer step (all
micro-batches of the accumulation window, on every process), so accumulation and more processes
equal a larger batch: the step's token count is summed across processes, and each process scales its
summed loss by ``ddp_token_scale`` (DDP averages gradients, so the world size is multiplied back in).
The learning-rate schedule is stepped once per optimizer step on every process
(``step_scheduler_with_optimizer=False``: accelerate would otherwise step it once per process and
finish it ``num_processes`` times too early). The batch order
is a pure function of (seed, epoch), and a checkpoint holds the trainable weights, optimizer,
scheduler, RNG states and step, so a killed run resumes where it stopped and ends with the same
weights as an uninterrupted one (tested on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends import resolve_model
from agent.backends.transformers import cache_kwarg, load_hf
from agent.config import dump_config
from agent.errors import ConfigError, DataError
from train import checkpoint
from train.data import read_jsonl
from train.render import IGNORE_INDEX, ChatRenderer, Features, add_tag_tokens
from train.runlog import MetricsLog, StepProgress

__all__ = ["SFTConfig", "SFTTrainer", "train_sft", "split_examples", "length_grouped_batches", "ddp_token_scale"]

log = logging.getLogger("splice.train.sft")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SFTConfig:
    model: str = field(default="default", metadata={
        "help": "'default' or 'base' (the SmolLM2 GGUF's base weights, without the shipped adapter), a .gguf "
                "file or a HF dir"})
    data: str = field(default="", metadata={"help": "training JSONL from `agent train data` / `train probe`"})
    output_dir: str = field(default="out/sft", metadata={"help": "output dir (checkpoint, metrics, adapter/model)"})
    syntax: str = field(default="splice", metadata={"help": "tag syntax the examples are rendered in"})
    tools: list[str] = field(default_factory=lambda: ["python", "search"], metadata={"help": "tool names"})
    lora: bool = field(default=True, metadata={"help": "train a LoRA adapter (--no-lora: full fine-tuning)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={"help": "modules"})
    lora_layers: int = field(default=0, metadata={
        "help": "LoRA on the top N decoder layers only (0 = all): backward stops below them, so a step is "
                "cheaper"})
    add_special_tokens: bool = field(default=False, metadata={"help": "add the syntax's tags as special tokens"})
    max_len: int = field(default=384, metadata={"help": "examples longer than this (tokens) are dropped"})
    max_result_tokens: int = field(default=256, metadata={"help": "tool result truncation (as the runtime)"})
    batch_size: int = field(default=4, metadata={"help": "examples per micro-batch (per process)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_batch_tokens: int = field(default=0, metadata={
        "help": "run a micro-batch in row groups of at most this many padded tokens (same gradient, less "
                "memory for long examples; 0 = whole)"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup steps, then cosine to 10%"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data (when max_steps is 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0 = from epochs)"})
    time_limit_min: float = field(default=0.0, metadata={"help": "stop cleanly after this many minutes (0 = off)"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share (by example id hash)"})
    eval_every: int = field(default=50, metadata={"help": "steps between eval-loss passes (0 = end only)"})
    save_every: int = field(default=50, metadata={"help": "steps between checkpoints (0 = end only)"})
    group_by_length: bool = field(default=True, metadata={"help": "batch examples of similar length"})
    share_prefix: bool = field(default=True, metadata={"help": "run a prefix shared by a batch (system prompt) once"})
    seed: int = field(default=0, metadata={"help": "seed of init, batch order and dropout"})
    resume: bool = field(default=True, metadata={"help": "resume from OUT/checkpoint when it exists"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast on GPU, and on a CPU with native bf16 matrix instructions, avx512_bf16 or "
                "amx_bf16: 1.5x per step on a 2-core EPYC; else fp32) | bf16 | fp32"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for name in ("tools", "lora_targets"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [t for t in getattr(self, name).split(",") if t])
        if self.lora_layers < 0:
            raise ConfigError(f"--lora-layers must be >= 0 (got {self.lora_layers})")
        for name in ("max_len", "batch_size", "grad_accum", "lora_r"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("give --max-steps > 0 or --epochs > 0")
        if self.lr <= 0:
            raise ConfigError("--lr must be > 0")


# -- data -----------------------------------------------------------------------------------------
def split_examples(rows: list[dict[str, Any]], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, eval): an example is held out by a hash of its id, so the split never shuffles."""
    cut = int(eval_fraction * 10_000)
    held = [zlib.crc32(str(r.get("id", i)).encode()) % 10_000 < cut for i, r in enumerate(rows)]
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group: bool = True) -> list[list[int]]:
    """One epoch of batches: shuffled; with ``group``, sorted by length inside mega-batches of 50
    batches (less padding), and the batch order shuffled again. A pure function of its arguments."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        mega = batch_size * 50
        order = [i for k in range(0, len(order), mega)
                 for i in sorted(order[k:k + mega], key=lambda j: -lengths[j])]
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def _featurize(renderer: ChatRenderer, rows: list[dict[str, Any]], max_len: int) -> list[Features]:
    out, dropped = [], 0
    for r in rows:
        f = renderer.features(r)
        if len(f) > max_len or f.n_target == 0:
            dropped += 1
            continue
        out.append(f)
    if dropped:
        log.warning("dropped %d of %d examples longer than max_len=%d tokens", dropped, len(rows), max_len)
    return out


def _shared_prefix(ids: Any, labels: Any, min_len: int = 32) -> int:
    """Length of the token prefix all rows share and none trains on (0 when short or one row)."""
    if ids.size(0) < 2:
        return 0
    p = int(((ids == ids[:1]).all(0)).int().cumprod(0).sum())
    trained = (labels != IGNORE_INDEX).any(0).nonzero()
    first = int(trained[0]) if len(trained) else ids.size(1)
    p = min(p, first - 1, ids.size(1) - 2)  # token p opens the suffix and is never a target
    return p if p >= min_len else 0


def prefix_groups(feats: list[Features], min_len: int = 32) -> list[list[int]]:
    """Positions of ``feats`` in groups whose rows share a long token prefix (a batch that mixes
    system prompts), so that each group runs its own prefix once. Rows are sorted by tokens; a row
    starts a new group when that costs fewer token positions than joining the current one (a group
    costs its shared prompt once plus every row's rest, padded to its longest row)."""
    def prompt(f: Features) -> int:  # tokens before the first trained one: never shared past it
        return next((i for i, x in enumerate(f.labels) if x != IGNORE_INDEX), len(f))

    def cost(group: list[int], shared: int) -> int:
        longest = max(len(feats[j]) for j in group)
        shared = shared if len(group) > 1 and shared >= min_len else 0
        return shared + len(group) * (longest - shared)

    order = sorted(range(len(feats)), key=lambda j: feats[j].input_ids)
    groups: list[list[int]] = []
    shared = 0
    for j in order:
        if groups:
            cur = groups[-1]
            common = len(os.path.commonprefix([feats[cur[0]].input_ids, feats[j].input_ids]))
            joined = min(shared, common, prompt(feats[j]))
            if cost(cur + [j], joined) <= cost(cur, shared) + len(feats[j]):
                cur.append(j)
                shared = joined
                continue
        groups.append([j])
        shared = prompt(feats[j])
    return groups


def _collate(feats: list[Features], pad_id: int, torch: Any) -> dict[str, Any]:
    n = max(len(f) for f in feats)
    ids = torch.full((len(feats), n), pad_id, dtype=torch.long)
    labels = torch.full((len(feats), n), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(feats), n), dtype=torch.long)
    for i, f in enumerate(feats):
        ids[i, : len(f)] = torch.tensor(f.input_ids)
        labels[i, : len(f)] = torch.tensor(f.labels)
        attn[i, : len(f)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


# -- model ----------------------------------------------------------------------------------------
def load_model(cfg: SFTConfig) -> tuple[Any, Any, list[int]]:
    """(model, tokenizer, new token ids) in fp32 on CPU; accelerate moves it and casts bf16."""
    model, tok = load_hf(resolve_model(cfg.model), device="cpu", dtype="float32")
    new_ids = add_tag_tokens(tok, model, cfg.syntax, cfg.tools) if cfg.add_special_tokens else []
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if cfg.lora:
        model = wrap_lora(model, cfg, new_ids)
    model.train()
    return model, tok, new_ids


def wrap_lora(model: Any, cfg: SFTConfig, new_ids: list[int]) -> Any:
    """LoRA on the target modules; new token rows are trained through ``trainable_token_indices``."""
    from peft import LoraConfig, get_peft_model

    extra: dict[str, Any] = {}
    if new_ids:
        extra["trainable_token_indices"] = {"embed_tokens": list(new_ids)}
    n = model.config.num_hidden_layers
    if cfg.lora_layers:
        if cfg.lora_layers > n:
            raise ConfigError(f"--lora-layers {cfg.lora_layers} exceeds the model's {n} layers")
        extra["layers_to_transform"] = list(range(n - cfg.lora_layers, n))
        extra["layers_pattern"] = "layers"
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM", **extra)
    return get_peft_model(model, lcfg)


def ddp_token_scale(global_tokens: int, world: int) -> float:
    """The factor for one process's summed token loss so that DDP's gradient *average* over ``world``
    processes is the gradient of the token mean over all ``global_tokens`` trained tokens of the step
    (not a mean of per-process means, which overweights a process with few tokens)."""
    return world / max(1, global_tokens)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises native bf16 matrix instructions (where bf16 autocast is faster
    than fp32; elsewhere it is emulated and slower)."""
    try:
        flags = set(Path(cpuinfo).read_text(errors="replace").split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def mixed_precision(precision: str, cpu: bool, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """accelerate's ``mixed_precision`` for ``SFTConfig.precision``: ``"bf16"`` or ``"no"``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return "bf16" if not cpu or cpu_has_bf16(cpuinfo) else "no"
    return "bf16" if precision == "bf16" else "no"


class SFTTrainer:
    """Owns model, data order, optimizer and checkpoints. ``fit()`` runs to the end; tests drive
    ``train_step`` / ``save_checkpoint`` directly to simulate a kill and resume."""

    def __init__(self, cfg: SFTConfig, rows: list[dict[str, Any]] | None = None):
        import torch
        from accelerate import Accelerator

        self.cfg, self.torch = cfg, torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cpu = cfg.device == "cpu" or not torch.cuda.is_available()
        # one scheduler step per optimizer step, whatever the number of processes (module docstring)
        # bf16 on a CPU is plain torch autocast around the forwards (``_autocast``): accelerate's
        # process-wide state would refuse a second trainer in one process with another precision
        self.precision = mixed_precision(cfg.precision, cpu)
        self.accel = Accelerator(cpu=cpu, mixed_precision="no" if cpu else self.precision,
                                 step_scheduler_with_optimizer=False)
        _seed_everything(cfg.seed, torch)
        self.out = Path(cfg.output_dir)
        self.model, self.tok, self.new_ids = load_model(cfg)
        self.renderer = ChatRenderer(self.tok, cfg.syntax, cfg.tools, max_result_tokens=cfg.max_result_tokens)
        self._load_data(rows)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, self.total_steps))
        self.model, self.opt, self.sched = self.accel.prepare(self.model, opt, sched)
        self.step, self.epoch_batches, self._n_epochs = 0, [], 0
        self.history: list[dict[str, Any]] = []

    # -- data order -----------------------------------------------------------------------------
    def _load_data(self, rows: list[dict[str, Any]] | None) -> None:
        cfg = self.cfg
        if rows is None:
            if not cfg.data:
                raise ConfigError("--data is required: a JSONL made by `agent train data`")
            rows = read_jsonl(cfg.data)
        train, held = split_examples(rows, cfg.eval_fraction)
        self.train_feats = _featurize(self.renderer, train, cfg.max_len)
        self.eval_feats = _featurize(self.renderer, held, cfg.max_len)
        if not self.train_feats:
            raise DataError(f"no training example fits max_len={cfg.max_len}")
        world = self.accel.num_processes
        per_step = cfg.batch_size * cfg.grad_accum * world
        epoch_steps = max(1, len(self.train_feats) // per_step)
        self.total_steps = cfg.max_steps or max(1, int(cfg.epochs * epoch_steps))

    def _micro(self, k: int) -> list[int]:
        """Global micro-batch number ``k`` (epochs concatenated), as example indices."""
        cfg, lengths = self.cfg, [len(f) for f in self.train_feats]
        while k >= len(self.epoch_batches):
            self.epoch_batches += length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 1000 + self._n_epochs,
                                                         cfg.group_by_length)
            self._n_epochs += 1
        return self.epoch_batches[k]

    def _chunks(self, idx: list[int]) -> list[list[int]]:
        """A micro-batch in row groups: by shared prompt where prefix sharing is on (``prefix_groups``),
        then of at most ``max_batch_tokens`` padded tokens (0: whole). The loss is a sum over tokens
        scaled by the step's token count, so the gradient is the same however the rows are grouped."""
        groups = [idx]
        if self.cfg.share_prefix and self.accel.num_processes == 1 and len(idx) > 1:
            groups = [[idx[j] for j in g] for g in prefix_groups([self.train_feats[i] for i in idx])]
        budget, out = self.cfg.max_batch_tokens, []
        for g in groups:
            rows = max(1, budget // max(len(self.train_feats[i]) for i in g)) if budget else len(g)
            out += [g[k:k + rows] for k in range(0, len(g), rows)]
        return out

    def step_batches(self, step: int) -> list[list[int]]:
        """The micro-batches this process trains on at ``step``."""
        a, w, r = self.cfg.grad_accum, self.accel.num_processes, self.accel.process_index
        return [self._micro((step * a + j) * w + r) for j in range(a)]

    # -- steps ----------------------------------------------------------------------------------
    def _loss_sum(self, batch: dict[str, Any]) -> tuple[Any, int]:
        """Summed token loss of a micro-batch and its number of trained tokens. A token prefix that
        every row shares (the system prompt) runs once and its KV cache is repeated over the batch:
        the same loss and gradients as running every row in full (causal attention), for less work.
        On one process the LM head runs only at positions that predict a trained token (the prompt,
        padding and tool results need no logits): the same loss, without a (rows x length x vocab)
        tensor, which dominates memory and much of the compute of a small model."""
        torch = self.torch
        batch = {k: v.to(self.accel.device) for k, v in batch.items()}
        ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
        parts = self._decoder_and_head()
        run = parts[0] if parts else self.model  # the decoder alone returns hidden states
        # (under DDP a second forward per backward is not allowed: there every row runs in full)
        p = _shared_prefix(ids, labels) if self.cfg.share_prefix and self.accel.num_processes == 1 else 0
        if p:
            from transformers import DynamicCache

            cache, key = DynamicCache(), cache_kwarg(run)
            run(input_ids=ids[:1, :p], use_cache=True, **{key: cache})  # fills ``cache`` in place
            cache.batch_repeat_interleave(ids.size(0))
            pos = torch.arange(p, ids.size(1), device=ids.device).unsqueeze(0).expand(ids.size(0), -1)
            out = run(input_ids=ids[:, p:], attention_mask=attn, position_ids=pos, use_cache=False, **{key: cache})
            labels = labels[:, p:]
        else:
            out = run(input_ids=ids, attention_mask=attn)
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        if parts:
            logits = parts[1](out.last_hidden_state[:, :-1][keep])
            loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
        else:
            logits = out.logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                     target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, int(keep.sum())

    def _decoder_and_head(self) -> tuple[Any, Any] | None:
        """(decoder, lm_head) of a plain causal LM on one process, else None (full forward). Under
        DDP the wrapper's own forward must run (gradient hooks); a model that post-processes its
        logits (soft-capping) or has no ``model``/``lm_head`` pair also takes the full forward."""
        if self.accel.num_processes != 1:
            return None
        base = self.accel.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        if getattr(base.config, "final_logit_softcapping", None) or not (hasattr(base, "model")
                                                                        and hasattr(base, "lm_head")):
            return None
        return base.model, base.lm_head

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean token loss."""
        torch, cfg = self.torch, self.cfg
        micro = self.step_batches(self.step)
        pad = self.tok.pad_token_id
        n_tok = self._global_sum(sum(self.train_feats[i].n_target for b in micro for i in b))
        scale = ddp_token_scale(int(n_tok), self.accel.num_processes)
        total = 0.0
        chunks = [c for idx in micro for c in self._chunks(idx)]
        for j, idx in enumerate(chunks):
            batch = _collate([self.train_feats[i] for i in idx], pad, torch)
            ctx = self.accel.no_sync(self.model) if j < len(chunks) - 1 else contextlib.nullcontext()
            with ctx, self._autocast():
                loss, _ = self._loss_sum(batch)
                self.accel.backward(loss * scale)
            total += float(loss.detach())
        total = self._global_sum(total)
        if cfg.max_grad_norm > 0:
            self.accel.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return total / max(1, n_tok)

    def _global_sum(self, x: float) -> float:
        """``x`` summed over all processes (itself on one)."""
        if self.accel.num_processes == 1:
            return x
        t = self.torch.tensor(float(x), dtype=self.torch.float64, device=self.accel.device)
        return float(self.accel.reduce(t, reduction="sum"))

    def evaluate(self) -> float | None:
        if not self.eval_feats:
            return None
        torch, bs = self.torch, self.cfg.batch_size
        self.model.eval()
        tot, n = 0.0, 0
        with torch.no_grad(), self._autocast():
            for k in range(0, len(self.eval_feats), bs):
                loss, cnt = self._loss_sum(_collate(self.eval_feats[k:k + bs], self.tok.pad_token_id, torch))
                tot, n = tot + float(loss), n + cnt
        self.model.train()
        return tot / max(1, n)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def trainable_state(self) -> dict[str, Any]:
        return checkpoint.trainable_state(self.accel.unwrap_model(self.model))

    def save_checkpoint(self) -> Path:
        """Trainable weights, optimizer, scheduler, RNG and step; written then renamed (atomic)."""
        self.accel.wait_for_everyone()
        if self.accel.is_main_process:
            checkpoint.save(self.ckpt_dir, self.step, self.trainable_state(), self.opt, self.sched,
                            meta={"history": self.history, "config": dump_config(self.cfg)}, rng=True)
        self.accel.wait_for_everyone()
        return self.ckpt_dir

    def maybe_resume(self) -> bool:
        if not (self.cfg.resume and (self.ckpt_dir / "state.pt").exists()):
            return False
        self.step, meta = checkpoint.load(self.ckpt_dir, self.accel.unwrap_model(self.model), self.opt, self.sched)
        self.history = list(meta.get("history", []))
        log.info("resumed from %s at step %d", self.ckpt_dir, self.step)
        return True

    # -- the run ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        log.info("sft config: %s", json.dumps(dump_config(cfg)))
        (self.out / "config.json").write_text(json.dumps(dump_config(cfg), indent=2))
        self.maybe_resume()
        metrics = MetricsLog(self.out, ("step", "loss", "eval_loss", "lr", "seconds"), self.history, prefix="sft",
                             png="loss.png", plot=plot_loss, enabled=self.accel.is_main_process)
        # "seconds" counts the whole run across resumes: a resumed run goes on from the checkpoint's clock
        done = next((h["seconds"] for h in reversed(self.history) if h.get("seconds") is not None), 0.0)
        run_t0, start_step, stopped = time.perf_counter(), self.step, False
        t0 = run_t0 - float(done)
        with StepProgress("sft", self.total_steps, self.step, cfg.progress and self.accel.is_main_process) as bar:
            while self.step < self.total_steps:
                loss = self.train_step()
                row = {"step": self.step, "loss": loss, "lr": self.sched.get_last_lr()[0],
                       "seconds": time.perf_counter() - t0}
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    row["eval_loss"] = self.evaluate()
                metrics.append(row)
                bar(self.step, f"loss {loss:.3f}")
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if cfg.time_limit_min and time.perf_counter() - run_t0 > 60 * cfg.time_limit_min:
                    stopped = True
                    break
        final_eval = self.evaluate()
        if self.history and self.history[-1].get("eval_loss") is None and self.history[-1]["step"] == self.step:
            self.history[-1]["eval_loss"] = final_eval
        else:
            metrics.append({"step": self.step, "eval_loss": final_eval, "seconds": time.perf_counter() - t0})
        self.save_checkpoint()
        saved = self.save_final()
        metrics.close()
        now = time.perf_counter()
        return {"steps": self.step, "steps_this_run": self.step - start_step, "stopped_early": stopped,
                "seconds": now - t0, "seconds_this_run": now - run_t0,
                "final_eval_loss": final_eval, "saved": str(saved),
                "train_examples": len(self.train_feats), "eval_examples": len(self.eval_feats),
                "precision": "bf16" if self.precision == "bf16" else "fp32",
                "first_loss": next((h["loss"] for h in self.history if "loss" in h), None),
                "last_loss": next((h["loss"] for h in reversed(self.history) if "loss" in h), None)}

    def _autocast(self) -> Any:
        if self.accel.device.type == "cpu":
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.precision == "bf16")
        return self.accel.autocast()

    def save_final(self) -> Path:
        """OUT/adapter (LoRA, with base model path) or OUT/model (full), plus the tokenizer."""
        self.accel.wait_for_everyone()
        path = self.out / ("adapter" if self.cfg.lora else "model")
        if self.accel.is_main_process:
            model = self.accel.unwrap_model(self.model)
            # new tag rows travel in the adapter (trainable tokens); the resized base is rebuilt on load
            model.save_pretrained(path, **({"save_embedding_layers": False} if self.cfg.lora else {}))
            self.tok.save_pretrained(path)
            meta = {"base_model": _base_path(self.cfg.model), "syntax": self.cfg.syntax, "tools": self.cfg.tools,
                    "lora": self.cfg.lora, "new_token_ids": self.new_ids, "steps": self.step}
            (path / "splice_train.json").write_text(json.dumps(meta, indent=2))
        return path


def _base_path(model: str) -> str:
    return str(resolve_model(model).resolve())


def _seed_everything(seed: int, torch: Any) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the loss curve (train.runlog.MetricsLog draws it) -------------------------------------------------
def plot_loss(history: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    ev = [(h["step"], h["eval_loss"]) for h in history if h.get("eval_loss") is not None]
    if tr:
        ax.plot(*zip(*tr), lw=0.8, alpha=0.5, label="train loss")
        k = max(1, len(tr) // 20)
        sm = [sum(v for _, v in tr[max(0, i - k):i + 1]) / len(tr[max(0, i - k):i + 1]) for i in range(len(tr))]
        ax.plot([s for s, _ in tr], sm, lw=1.6, label=f"train loss (mean of {k + 1})")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def train_sft(cfg: SFTConfig, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train to the end (resuming from ``cfg.output_dir``/checkpoint if present); returns a summary."""
    return SFTTrainer(cfg, rows).fit()
