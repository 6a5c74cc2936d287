"""``agent train ...``: data, probe, sft, export (and grpo, rm when their modules are present).

Each subcommand's flags come from its config dataclass (``agent.config.add_arguments``); handlers
only build the config and call the library. The train modules import torch (and the other heavy
optional dependencies) only when they train or export, so building the parser needs none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
from collections import Counter
from typing import Any

from agent.config import HelpFormatter, add_arguments, from_args
from train.data import DataConfig, make_data, open_tools
from train.export import DatasetConfig, ExportConfig, export, export_dataset
from train.probe import ProbeConfig, run_probe
from train.recipe import RecipeConfig, run_recipe
from train.recipe_eval import CompareConfig, compare_runs
from train.sft import SFTConfig, train_sft

__all__ = ["add_parser", "open_tools"]


def add_parser(subparsers: Any) -> None:
    """Register ``train`` and its sub-subcommands on the ``agent`` subparsers."""
    train = subparsers.add_parser("train", help="make tool-use data, fine-tune, export",
                                  formatter_class=HelpFormatter)
    sub = train.add_subparsers(dest="train_command", required=True, metavar="STEP")
    for name, cls, func, help_ in (
        ("data", DataConfig, _cmd_data, "synthesise tool-use chats by running the real tools"),
        ("probe", ProbeConfig, _cmd_probe, "knowledge probe: search/refuse where the model does not know"),
        ("sft", SFTConfig, _cmd_sft, "supervised fine-tuning (LoRA or full) with exact loss masks"),
        ("export", ExportConfig, _cmd_export, "merge LoRA, save a HF model, write GGUF (model or adapter)"),
        ("dataset", DatasetConfig, _cmd_dataset, "export training JSONL as a HF datasets dataset (TRL's SFTTrainer)"),
        ("recipe", RecipeConfig, _cmd_recipe, "data, SFT, export, eval and card of the shipped adapter, resumable"),
        ("compare", CompareConfig, _cmd_compare, "recipe evals side by side (held-out sets and families, multi-hop)"),
    ):
        p = sub.add_parser(name, help=help_, description=importlib.import_module(cls.__module__).__doc__,
                           formatter_class=HelpFormatter)
        add_arguments(p, cls)
        p.set_defaults(func=func)
    for mod in ("train.grpo", "train.reward"):
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        module.add_parser(sub)


def _cmd_data(ns: argparse.Namespace) -> int:
    cfg = from_args(DataConfig, ns)
    return asyncio.run(_data(cfg))


async def _data(cfg: DataConfig) -> int:
    rows = await make_data(cfg)
    print(json.dumps({"out": cfg.out, "examples": len(rows), "families": Counter(r["family"] for r in rows)}))
    return 0


def _cmd_probe(ns: argparse.Namespace) -> int:
    cfg = from_args(ProbeConfig, ns)
    return asyncio.run(_probe(cfg))


async def _probe(cfg: ProbeConfig) -> int:
    async with open_tools(cfg.syntax, cfg.index, cfg.multihop, need_search=cfg.search) as tools:
        print(json.dumps(await run_probe(cfg, tools)))
    return 0


def _cmd_sft(ns: argparse.Namespace) -> int:
    print(json.dumps(train_sft(from_args(SFTConfig, ns)), default=str))
    return 0


def _cmd_export(ns: argparse.Namespace) -> int:
    print(json.dumps(export(from_args(ExportConfig, ns)), default=str))
    return 0


def _cmd_recipe(ns: argparse.Namespace) -> int:
    state = run_recipe(from_args(RecipeConfig, ns))
    print(json.dumps({k: state[k] for k in ("export", "card") if k in state}, default=str))
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    print(compare_runs(from_args(CompareConfig, ns)), end="")
    return 0


def _cmd_dataset(ns: argparse.Namespace) -> int:
    print(json.dumps(export_dataset(from_args(DatasetConfig, ns))))
    return 0
