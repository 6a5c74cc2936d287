"""``agent train ...``: data, probe, sft, export (and grpo, rm when their modules are present).

Each subcommand's flags come from its config dataclass (``agent.config.add_arguments``); handlers
only build the config and call the library. Heavy imports (torch, tools) happen inside handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.config import HelpFormatter, add_arguments, from_args

__all__ = ["add_parser", "open_tools"]


def add_parser(subparsers: Any) -> None:
    """Register ``train`` and its sub-subcommands on the ``agent`` subparsers."""
    from train.data import DataConfig
    from train.export import DatasetConfig, ExportConfig
    from train.probe import ProbeConfig
    from train.recipe import RecipeConfig
    from train.sft import SFTConfig

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


@contextlib.asynccontextmanager
async def open_tools(syntax: str, index: str = "", multihop: str = "",
                     need_search: bool = True) -> AsyncIterator[dict[str, Any]]:
    """The real tools: the Python sandbox and (when needed) local search over ``index``, built from
    the multi-hop passages first if the index does not exist yet."""
    from tools.base import get_tool

    tools = {"python": get_tool("python")}
    if need_search and index:
        if not await asyncio.to_thread(Path(index).exists):
            await asyncio.to_thread(build_search_index, index, multihop)
        tools["search"] = get_tool("search", backend="local", index=index)
    try:
        yield tools
    finally:
        for t in tools.values():
            await t.aclose()


def build_search_index(index: str, multihop: str) -> None:
    from agent.errors import ConfigError
    from tools.search import build_index
    from train.data import multihop_corpora

    if not multihop:
        raise ConfigError(f"search index {index} does not exist; give --multihop DIR to build it from passages")
    build_index(multihop_corpora(multihop), index, progress=False)


def _cmd_data(ns: argparse.Namespace) -> int:
    from train.data import DataConfig

    cfg = from_args(DataConfig, ns)
    return asyncio.run(_data(cfg))


async def _data(cfg: Any) -> int:
    from collections import Counter

    rows = await _data_rows(cfg)
    print(json.dumps({"out": cfg.out, "examples": len(rows), "families": Counter(r["family"] for r in rows)}))
    return 0


async def _data_rows(cfg: Any) -> list[dict[str, Any]]:
    """Synthesise the data ``cfg`` describes with the real tools and write it to ``cfg.out``."""
    from train.data import build_plans, family_limits, synthesize, write_jsonl

    plans = build_plans(cfg)
    async with open_tools(cfg.syntax, cfg.index, cfg.multihop, need_search=cfg.n_multihop + cfg.n_hop > 0) as tools:
        rows = await synthesize(plans, tools, cfg.syntax, cfg.concurrency, family_limits(cfg))
    write_jsonl(rows, cfg.out)
    return rows


def _cmd_probe(ns: argparse.Namespace) -> int:
    from train.probe import ProbeConfig

    cfg = from_args(ProbeConfig, ns)
    return asyncio.run(_probe(cfg))


async def _probe(cfg: Any) -> int:
    from train.probe import run_probe

    async with open_tools(cfg.syntax, cfg.index, cfg.multihop, need_search=cfg.search) as tools:
        print(json.dumps(await run_probe(cfg, tools)))
    return 0


def _cmd_sft(ns: argparse.Namespace) -> int:
    from train.sft import SFTConfig, train_sft

    print(json.dumps(train_sft(from_args(SFTConfig, ns)), default=str))
    return 0


def _cmd_export(ns: argparse.Namespace) -> int:
    from train.export import ExportConfig, export

    print(json.dumps(export(from_args(ExportConfig, ns)), default=str))
    return 0


def _cmd_recipe(ns: argparse.Namespace) -> int:
    from train.recipe import RecipeConfig, run_recipe

    state = run_recipe(from_args(RecipeConfig, ns))
    print(json.dumps({k: state[k] for k in ("export", "card") if k in state}, default=str))
    return 0


def _cmd_dataset(ns: argparse.Namespace) -> int:
    from train.export import DatasetConfig, export_dataset

    print(json.dumps(export_dataset(from_args(DatasetConfig, ns))))
    return 0
