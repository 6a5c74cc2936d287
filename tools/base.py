"""The tool interface and the registry.

A tool is anything the model can call by name with one string argument (a query, a program).
Each episode opens its own *session* of a tool (``async with tool.session() as call``), so stateful
tools (the Python sandbox) keep variables within an episode and nothing leaks across episodes.

Failures the model caused (bad code, no results, a timeout) come back as ``ToolOutput(error=True)``:
the model reads them and can recover. Bugs in splice itself raise.

What a timeout can stop: an async tool is cancelled (and its late result, if it ignores that, is
discarded). What it cannot: a thread. A sync ``@tool`` runs in the tool's own bounded pool of daemon
threads (``ToolThreads``, not asyncio's default executor, which local search and python share), so a
call that hangs past its timeout holds one of that tool's threads until it returns, never another
tool's, and never keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import importlib
import inspect
import math
import threading
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
    "as_output",
    "check_timeout",
    "ToolThreads",
]


@dataclass
class ToolOutput:
    """What a tool returns: plain text for splicing, plus facts for the trajectory."""

    text: str
    error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


ToolCallable = Callable[[str], Awaitable[ToolOutput]]


def as_output(value: Any, name: str) -> ToolOutput:
    """What a tool returned, as a ToolOutput: a str or bytes (decoded, invalid UTF-8 replaced) is
    its text; anything else is an error result the model reads."""
    if isinstance(value, ToolOutput):
        return value if isinstance(value.text, str) else ToolOutput(str(value.text), value.error, value.meta)
    if isinstance(value, str):
        return ToolOutput(value)
    if isinstance(value, (bytes, bytearray)):
        return ToolOutput(bytes(value).decode("utf-8", errors="replace"))
    kind = "no result (None)" if value is None else type(value).__name__
    return ToolOutput(f"error: tool {name} returned {kind}; it must return a ToolOutput or str", error=True)


def check_timeout(name: str, value: float | None, example: str) -> None:
    """A timeout is a finite number of seconds > 0 (nan and inf would never fire)."""
    from agent.errors import ConfigError

    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number of seconds > 0 (got {value!r}); e.g. {example}")


class ToolThreads(concurrent.futures.Executor):
    """At most ``limit`` daemon threads for one tool's sync calls. A call queued when its caller
    gave up (cancelled future) is skipped; a running one cannot be stopped and keeps its thread
    until it returns. Threads exit when the queue is empty; daemon threads never block exit."""

    def __init__(self, limit: int = 4, name: str = "tool"):
        self.limit, self.name = max(1, limit), name
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple]] = \
            collections.deque()
        self._busy = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((fut, fn, args))
            if self._busy < self.limit:
                self._busy += 1
                threading.Thread(target=self._work, name=f"splice-tool-{self.name}", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._busy -= 1
                    return
                fut, fn, args = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - SystemExit from tool code included: the caller decides
                fut.set_exception(e)


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
                 timeout_s: float | None = None, max_threads: int = 4):
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 1:
            raise TypeError(f"tool function {fn.__name__} must take exactly one argument, got {len(params)}")
        check_timeout("timeout_s", timeout_s, "@tool(timeout_s=10)")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or self.name
        self.arg_name = params[0].name
        self.timeout_s = timeout_s
        self.threads = ToolThreads(max_threads, self.name)  # sync calls: never asyncio's default executor

    async def call(self, arg: str) -> ToolOutput:
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(arg)
        else:
            out = await asyncio.wrap_future(self.threads.submit(self.fn, arg))
        plain = isinstance(out, (ToolOutput, str, bytes, bytearray)) or out is None
        return as_output(out if plain else str(out), self.name)  # a plain function may return a number


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
