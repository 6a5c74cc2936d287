"""The ``agent`` command: a thin layer that parses options and calls the library.

Subcommands: ``run`` (one question, streamed live), ``chat`` (a REPL keeping history), and those
registered by other packages: ``index`` (tools.search), ``eval`` (agent.evals), ``train`` (train).
Only this module turns SpliceError into a one-line message (exit status 2); so are the OS errors a
user's paths cause (a folder where a file was expected, a read-only directory), as a backstop.

Global flags: ``--version``, ``-v/--verbose`` (info logs, ``-vv`` debug) and ``-q/--quiet`` (errors
only); logs go to stderr. They are accepted before the subcommand and after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from agent.config import HelpFormatter, add_arguments, from_args
from agent.errors import ConfigError, SpliceError
from agent.runtime import RuntimeConfig

__all__ = ["main", "build_parser", "configure_logging", "iter_parsers", "package_version"]

# Loggers of this project (``splice.*`` and module loggers of its packages) that -v/-q configure.
_LOGGERS = ("splice", "agent", "tools", "sandbox", "train")
_LOG_FORMAT = "agent: %(levelname)s: %(message)s"

# (module, attribute): each provides add_parser(subparsers); missing optional parts are skipped.
_PLUGINS = [("tools.search.cli", "add_parser"), ("agent.evals.cli", "add_parser"), ("train.cli", "add_parser")]


def _runtime_args(p: argparse.ArgumentParser) -> None:
    add_arguments(p, RuntimeConfig)
    p.add_argument("--json", action="store_true", help="print the trajectory as one JSON line")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splice")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _log_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """-v/-q; subcommands get them with SUPPRESS defaults so they do not undo the top-level ones."""
    verbose, quiet = (0, False) if top else (argparse.SUPPRESS, argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=verbose,
                   help="show progress logs on stderr (-vv: debug logs) (default: warnings only)")
    p.add_argument("-q", "--quiet", action="store_true", default=quiet,
                   help="show errors only (default: warnings too)")


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser under it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from iter_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="splice: language models that use tools "
                                     "inside their own token stream")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="answer one question, streaming the model's text and tool calls",
                         formatter_class=HelpFormatter)
    run.add_argument("question", help="the question to answer")
    _runtime_args(run)
    run.set_defaults(func=_cmd_run)
    chat = sub.add_parser("chat", help="interactive chat that keeps history (Ctrl-D to quit)",
                          formatter_class=HelpFormatter)
    _runtime_args(chat)
    chat.set_defaults(func=_cmd_chat)
    for mod, attr in _PLUGINS:
        try:
            getattr(importlib.import_module(mod), attr)(sub)
        except ImportError:
            continue
    for p in list(iter_parsers(parser))[1:]:
        _log_flags(p, top=False)
    return parser


@contextlib.contextmanager
def configure_logging(verbose: int = 0, quiet: bool = False) -> Iterator[None]:
    """One stderr handler on the project's loggers while the command runs: warnings by default,
    info with -v, debug with -vv, errors only with -q. The loggers' previous state is restored after,
    so ``main()`` called in-process (tests, notebooks) leaves logging as it found it."""
    level = logging.ERROR if quiet else logging.WARNING if not verbose else \
        logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (old_level, old_propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(old_level)
            lg.propagate = old_propagate


def _check_text(value: str, what: str) -> str:
    """Command-line text that is not valid UTF-8 (undecodable bytes arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{what} is not valid UTF-8 (byte {e.object[e.start:e.end]!a} at position "
                          f"{e.start}); check the terminal's or the file's encoding") from None
    return value


def _config(ns: argparse.Namespace) -> RuntimeConfig:
    return from_args(RuntimeConfig, ns)


def _cmd_run(ns: argparse.Namespace) -> int:
    _check_text(ns.question, "the question")
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
    from agent.ui import LivePrinter, NotUTF8, read_line

    cfg = _config(ns)
    async with Agent(cfg.model, tools=cfg.tools, syntax=cfg.syntax, config=cfg) as agent:
        conv = agent.chat()
        while True:
            try:
                line = await read_line("you> ")
            except NotUTF8 as e:
                print(f"agent: {e}", file=sys.stderr)
                continue
            if line is None:
                return 0
            if not line.strip():
                continue
            printer = LivePrinter(quiet=ns.json)
            async for ev in conv.stream(line):
                printer.handle(ev)
            if ns.json:
                print(printer.trajectory.to_json())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        with configure_logging(ns.verbose, ns.quiet):
            return int(ns.func(ns) or 0)
    # OSError: a path the user gave (a folder where a file belongs, no permission, ...).
    except (SpliceError, OSError) as e:
        print(f"agent: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agent: interrupted", file=sys.stderr)
        return 130


def _json_default(o: Any) -> Any:  # pragma: no cover - used by plugins printing summaries
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
