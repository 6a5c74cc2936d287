"""The ``agent`` command: a thin layer that parses options and calls the library.

Subcommands: ``run`` (one question, streamed live), ``chat`` (a REPL keeping history), and those
registered by other packages: ``index`` (tools.search), ``eval`` (agent.evals), ``train`` (train).
Only this module turns SpliceError into a one-line message.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any

from agent.config import add_arguments, from_args
from agent.errors import SpliceError
from agent.runtime import RuntimeConfig

__all__ = ["main", "build_parser"]

# (module, attribute): each provides add_parser(subparsers); missing optional parts are skipped.
_PLUGINS = [("tools.search.cli", "add_parser"), ("agent.evals.cli", "add_parser"), ("train.cli", "add_parser")]


def _runtime_args(p: argparse.ArgumentParser) -> None:
    add_arguments(p, RuntimeConfig)
    p.add_argument("--json", action="store_true", help="print the trajectory as one JSON line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="splice: language models that use tools "
                                     "inside their own token stream")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="answer one question, streaming the model's text and tool calls")
    run.add_argument("question", help="the question to answer")
    _runtime_args(run)
    run.set_defaults(func=_cmd_run)
    chat = sub.add_parser("chat", help="interactive chat that keeps history (Ctrl-D to quit)")
    _runtime_args(chat)
    chat.set_defaults(func=_cmd_chat)
    for mod, attr in _PLUGINS:
        try:
            getattr(importlib.import_module(mod), attr)(sub)
        except ImportError:
            continue
    return parser


def _config(ns: argparse.Namespace) -> RuntimeConfig:
    return from_args(RuntimeConfig, ns)


def _cmd_run(ns: argparse.Namespace) -> int:
    return asyncio.run(_run(ns))


async def _run(ns: argparse.Namespace) -> int:
    from agent.runtime import Agent
    from agent.ui import LivePrinter

    cfg = _config(ns)
    async with Agent(cfg.model, tools=cfg.tools, syntax=cfg.syntax, config=cfg) as agent:
        printer = LivePrinter(quiet=ns.json)
        async for ev in agent.stream(ns.question):
            printer.handle(ev)
        if ns.json:
            print(printer.trajectory.to_json())
    return 0


def _cmd_chat(ns: argparse.Namespace) -> int:
    return asyncio.run(_chat(ns))


async def _chat(ns: argparse.Namespace) -> int:
    from agent.runtime import Agent
    from agent.ui import LivePrinter, read_line

    cfg = _config(ns)
    async with Agent(cfg.model, tools=cfg.tools, syntax=cfg.syntax, config=cfg) as agent:
        conv = agent.chat()
        while True:
            line = await read_line("you> ")
            if line is None:
                return 0
            if not line.strip():
                continue
            printer = LivePrinter(quiet=ns.json)
            async for ev in conv.stream(line):
                printer.handle(ev)
            if ns.json:
                print(printer.trajectory.to_json())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns) or 0)
    except SpliceError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agent: interrupted", file=sys.stderr)
        return 130


def _json_default(o: Any) -> Any:  # pragma: no cover - used by plugins printing summaries
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
