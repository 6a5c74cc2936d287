"""The ``agent`` command: a thin layer that parses options and calls the library.

Subcommands: ``run`` (one question, streamed live), ``chat`` (a REPL keeping history), ``tools``
(what tools are available, with their schemas), ``serve`` (an OpenAI-compatible endpoint running the
tool loop), and those registered by other packages: ``index`` (tools.search), ``eval``
(agent.evals), ``train`` (train). A package that cannot be imported still has its subcommand, which
says why it is unavailable instead of vanishing from the command.
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
from agent.errors import ConfigError, MissingDependency, SpliceError
from agent.runtime import Agent, RuntimeConfig
from agent.serve import ServeConfig, serve_forever
from agent.ui import LivePrinter, NotUTF8, read_line
from tools.registry import tool_catalog
from tools.schema import signature_hint

__all__ = ["main", "build_parser", "configure_logging", "iter_parsers", "package_version"]

# Loggers of this project (``splice.*`` and module loggers of its packages) that -v/-q configure.
_LOGGERS = ("splice", "agent", "tools", "sandbox", "train")
_LOG_FORMAT = "agent: %(levelname)s: %(message)s"

# (command, module): each module provides add_parser(subparsers). One that fails to import is listed
# as unavailable, with the reason, never dropped.
_PLUGINS = [("index", "tools.search.cli"), ("eval", "agent.evals.cli"), ("train", "train.cli")]


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
    tools = sub.add_parser("tools", help="list the tools available (built-in, plugins, MCP) with their schemas",
                           formatter_class=HelpFormatter)
    tools.add_argument("specs", nargs="*", metavar="SPEC",
                       help="list only these: names, module:attr paths or 'mcp:COMMAND' (default: everything)")
    tools.add_argument("--json", action="store_true", help="one JSON object per tool")
    tools.set_defaults(func=_cmd_tools)
    _add_serve(sub)
    for command, mod in _PLUGINS:
        try:
            importlib.import_module(mod).add_parser(sub)
        except Exception as e:  # noqa: BLE001 - any import failure: the command says so when run
            _unavailable(sub, command, mod, e)
    for p in list(iter_parsers(parser))[1:]:
        _log_flags(p, top=False)
    return parser


def _unavailable(sub: argparse._SubParsersAction, command: str, mod: str, e: BaseException) -> None:
    """A placeholder subcommand for a package that failed to import: it names the failure."""
    if command in sub.choices:  # it registered itself before failing: keep what it has
        return
    reason = f"'agent {command}' is unavailable: importing {mod} failed: {type(e).__name__}: {_one_line(e)}"
    p = sub.add_parser(command, help=f"(unavailable: {type(e).__name__}: {_one_line(e)})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def fail(ns: argparse.Namespace) -> int:
        raise (MissingDependency if isinstance(e, ImportError) else SpliceError)(reason)

    p.set_defaults(func=fail)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible /v1/chat/completions endpoint running the tool "
                           "loop on the server", formatter_class=HelpFormatter,
                           description="Serve the configured model and tools at /v1/chat/completions. It runs "
                           "model-written code for whoever can reach it: it binds 127.0.0.1 unless told "
                           "otherwise, and any other address needs --key.")
    add_arguments(serve, ServeConfig)
    add_arguments(serve, RuntimeConfig)
    serve.set_defaults(func=_cmd_serve)


def _cmd_serve(ns: argparse.Namespace) -> int:
    scfg = from_args(ServeConfig, ns)  # validates host and key before a model loads
    return asyncio.run(serve_forever(_config(ns), scfg))


def _cmd_tools(ns: argparse.Namespace) -> int:
    import json


    infos = tool_catalog(ns.specs or None)
    for info in infos:
        if ns.json:
            print(json.dumps({k: v for k, v in vars(info).items() if v not in ("", None)}, ensure_ascii=False))
        elif info.error:
            print(f"{info.name}  [{info.source}]  BROKEN: {info.error}\n")
        else:
            print(f"{info.name}  [{info.source}]")
            print("  " + info.description.replace("\n", "\n  "))
            print(f"  call: {signature_hint(info.name, info.parameters or {})}")
            print(f"  schema: {json.dumps(info.parameters, ensure_ascii=False)}\n")
    broken = [i.name for i in infos if i.error]
    if broken:
        print(f"agent: {len(broken)} tool(s) cannot be loaded: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


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
