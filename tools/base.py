"""The tool interface and the registry.

A tool is anything the model can call by name with one string argument (a query, a program).
Each episode opens its own *session* of a tool (``async with tool.session() as call``), so stateful
tools (the Python sandbox) keep variables within an episode and nothing leaks across episodes.

Failures the model caused (bad code, no results, a timeout) come back as ``ToolOutput(error=True)``:
the model reads them and can recover. Bugs in splice itself raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Tool",
    "ToolOutput",
    "ToolCallable",
    "FunctionTool",
    "tool",
    "register",
    "get_tool",
    "available_tools",
    "truncate_middle",
    "truncate_tokens",
]


@dataclass
class ToolOutput:
    """What a tool returns: plain text for splicing, plus facts for the trajectory."""

    text: str
    error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


ToolCallable = Callable[[str], Awaitable[ToolOutput]]


class Tool:
    """Base class. Subclasses set ``name``, ``description``, ``arg_name`` and implement ``call``,
    or override ``session`` when they hold per-episode state."""

    name: str = ""
    description: str = ""
    arg_name: str = "input"  # the JSON argument name for JSON-call syntaxes (hermes)
    examples: tuple[tuple[str, str], ...] = ()  # (argument, result) pairs shown in the system prompt
    timeout_s: float | None = None  # the runtime's limit per call; None = RuntimeConfig.tool_timeout_s.
    # Tools that enforce their own limit set it a little above theirs, so their clearer message wins.

    async def call(self, arg: str) -> ToolOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[ToolCallable]:
        """Per-episode state. The default is stateless: every call goes to ``call``."""
        yield self.call

    async def aclose(self) -> None:
        """Release process-wide resources (pools, clients). Idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionTool(Tool):
    """A tool made from a plain (sync or async) function ``f(arg: str) -> str``."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None):
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 1:
            raise TypeError(f"tool function {fn.__name__} must take exactly one argument, got {len(params)}")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or self.name
        self.arg_name = params[0].name
        self.timeout_s = timeout_s

    async def call(self, arg: str) -> ToolOutput:
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(arg)
        else:
            out = await asyncio.to_thread(self.fn, arg)
        return out if isinstance(out, ToolOutput) else ToolOutput(str(out))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout_s: float | None = None):
    """Decorator: ``@tool`` turns ``def f(query: str) -> str`` (docstring = description) into a Tool
    and registers it under its name."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        t = FunctionTool(f, name=name, timeout_s=timeout_s)
        register(t.name, lambda **_: t)
        return t

    return wrap(fn) if fn is not None else wrap


class _Factory(Protocol):
    def __call__(self, **options: Any) -> Tool: ...


def _python_factory(**options: Any) -> Tool:
    from tools.python import PythonTool

    return PythonTool(**options)


def _search_factory(**options: Any) -> Tool:
    from tools.search import SearchTool

    return SearchTool(**options)


# Built-ins are registered the same way as user tools: by name -> factory.
_REGISTRY: dict[str, _Factory] = {"python": _python_factory, "search": _search_factory}


def register(name: str, factory: _Factory) -> None:
    _REGISTRY[name] = factory


def available_tools() -> list[str]:
    return sorted(_REGISTRY)


def get_tool(spec: str | Tool, **options: Any) -> Tool:
    """A Tool from a registered name (``"python"``), an import path (``"pkg.mod:obj"``) or a Tool."""
    from agent.errors import ToolError

    if isinstance(spec, Tool):
        return spec
    if spec in _REGISTRY:
        return _REGISTRY[spec](**options)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except Exception as e:  # ImportError, AttributeError, or whatever the module raises on import
            raise ToolError(f"cannot import tool {spec!r}: {type(e).__name__}: {e}") from e
        if isinstance(obj, Tool):
            return obj
        if isinstance(obj, type) and issubclass(obj, Tool):
            return obj(**options)
        if callable(obj):
            try:
                return FunctionTool(obj)
            except (TypeError, ValueError) as e:  # not one argument, or no signature (some builtins)
                raise ToolError(f"{spec!r} is not usable as a tool: {e}") from e
        raise ToolError(f"{spec!r} is not a Tool, Tool class or function")
    raise ToolError(f"unknown tool {spec!r}; available: {', '.join(available_tools())} "
                     "(or give an import path 'module:name')")


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text``, with a marker saying how much was cut."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... output truncated: {cut} characters cut ...]\n{text[len(text) - tail:]}"


def truncate_tokens(text: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                    max_tokens: int) -> str:
    """Head (2/3) and tail (1/3) of a long tool result in tokens, with a marker saying how much was cut."""
    ids = encode(text)
    if len(ids) <= max_tokens:
        return text
    head, tail = max_tokens * 2 // 3, max_tokens - max_tokens * 2 // 3
    return (decode(ids[:head]) + f"\n[... {len(ids) - max_tokens} tokens of output truncated ...]\n"
            + decode(ids[len(ids) - tail:]))
