"""The tool interface and the registry.

A tool is anything the model can call by name. The classic tool takes one string (a query, a
program); a typed tool takes arguments described by a JSON schema (``Tool.parameters``), which
``@tool`` builds from a function's type hints, defaults and docstring (``tools.schema``). The runtime
checks every call against the schema first (``Tool.bind``): a bad call is an error result the model
reads, never an exception out of the episode. Each episode opens its own *session* of a tool
(``async with tool.session() as call``), so stateful tools (the Python sandbox) keep
variables within an episode and nothing leaks across episodes.

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
import dataclasses
import functools
import inspect
import json
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from prompts import message
from tools.errors import ConfigError
from tools.schema import (
    ArgumentError,
    check,
    example_arguments,
    function_schema,
    is_single_string,
    jsonable,
    signature_hint,
)

__all__ = [
    "Tool",
    "ToolOutput",
    "ToolCallable",
    "FunctionTool",
    "tool",
    "register",
    "truncate_middle",
    "truncate_tokens",
    "as_output",
    "check_timeout",
    "make_options",
    "ToolThreads",
]


@dataclass
class ToolOutput:
    """What a tool returns: plain text for splicing, plus facts for the trajectory."""

    text: str
    error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


# A session's call: the argument string for one-string tools, the checked argument dict for typed ones.
ToolCallable = Callable[[Any], Awaitable[ToolOutput]]


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
    return ToolOutput(message("bad_return", tool=name, kind=kind), error=True)


def make_options(options: type, values: dict[str, Any], tool: str) -> Any:
    """``options(**values)`` for tool ``tool``, with a ConfigError naming unknown keys (and the known ones)."""
    known = {f.name for f in dataclasses.fields(options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {tool} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return options(**values)


def check_timeout(name: str, value: float | None, example: str) -> None:
    """A timeout is a finite number of seconds > 0 (nan and inf would never fire)."""
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
    or override ``session`` when they hold per-episode state. A typed tool also sets ``parameters``
    (a JSON schema of an object); its session then receives the checked argument dict."""

    name: str = ""
    description: str = ""
    arg_name: str = "input"  # the JSON argument name for JSON-call syntaxes (hermes)
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments; None = one string (arg_name)
    examples: tuple[tuple[Any, str], ...] = ()  # (argument, result) pairs shown in the system prompt
    # The dataclass of the keyword options the class is built with (``SandboxConfig`` for python):
    # ``RuntimeConfig.tool_config[name]`` is checked against it and the CLI gets ``--<name>-<option>``.
    options: ClassVar[type | None] = None
    timeout_s: float | None = None  # the runtime's limit per call; None = RuntimeConfig.tool_timeout_s.
    # Tools that enforce their own limit set it a little above theirs, so their clearer message wins.

    async def call(self, arg: Any) -> ToolOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[ToolCallable]:
        """Per-episode state. The default is stateless: every call goes to ``call``."""
        yield self.call

    async def aclose(self) -> None:
        """Release process-wide resources (pools, clients). Idempotent."""

    # -- arguments ----------------------------------------------------------------------------
    @property
    def takes_object(self) -> bool:
        """False for the one-string form (tag syntaxes put the string between the tags)."""
        return not is_single_string(self.parameters, self.arg_name)

    def schema(self) -> dict[str, Any]:
        """``{"name", "description", "parameters"}``: the OpenAI / MCP function shape."""
        return tool_schema(self.name, self.description, self.parameters, self.arg_name)

    def bind(self, arg: str, args: Any = None) -> Any:
        """What the session is called with: the string for a one-string tool (unchanged), else the
        argument dict checked against ``parameters``. ``args`` is the JSON ``arguments`` of a JSON
        call; tag syntaxes give only ``arg``, the text between the tags: a JSON object, or the bare
        value of a tool with a single parameter. Raises ``ArgumentError`` (message for the model)."""
        if not self.takes_object:
            return arg
        schema = self.parameters or {}
        if args is None:
            args = _arguments_from_text(arg, schema)
        if not isinstance(args, dict):
            raise ArgumentError(f"arguments must be a JSON object, got {json.dumps(args, ensure_ascii=False)[:60]}")
        return check(schema, args)

    def argument_error(self, e: ArgumentError) -> ToolOutput:
        """The result the model reads after a bad call."""
        hint = signature_hint(self.name, self.parameters or {})
        return ToolOutput(message("bad_arguments", tool=self.name, error=str(e), hint=hint), error=True,
                          meta={"bad_arguments": True})

    # -- system prompt ------------------------------------------------------------------------
    def prompt_description(self) -> str:
        """The description in the system prompt: a typed tool's schema follows its description;
        a one-string tool's text is its description alone (the built-ins' prompt never changes)."""
        if not self.takes_object:
            return self.description
        return f"{self.description}\n  Arguments (JSON schema): {json.dumps(self.parameters, ensure_ascii=False)}"

    def example_argument(self) -> Any:
        """The argument of the system prompt's example call when ``examples`` is empty."""
        return example_arguments(self.parameters or {}) if self.takes_object else "..."

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def tool_schema(name: str, description: str, parameters: dict[str, Any] | None, arg_name: str) -> dict[str, Any]:
    if parameters is None:
        parameters = {"type": "object", "properties": {arg_name: {"type": "string"}}, "required": [arg_name]}
    return {"name": name, "description": description, "parameters": parameters}


def _arguments_from_text(text: str, schema: dict[str, Any]) -> Any:
    props = list((schema.get("properties") or {}).items())
    try:
        value = json.loads(text)
    except ValueError:
        value = _NOT_JSON
    if isinstance(value, dict) or len(props) != 1:
        if value is _NOT_JSON:
            example = json.dumps(example_arguments(schema), ensure_ascii=False)
            raise ArgumentError(f"write the arguments as a JSON object, e.g. {example}")
        return value
    key, prop = props[0]
    wants_string = isinstance(prop, dict) and "string" in (
        [prop.get("type")] if isinstance(prop.get("type"), str) else prop.get("type") or [])
    return {key: text if wants_string or value is _NOT_JSON else value}


_NOT_JSON = object()


class FunctionTool(Tool):
    """A tool made from a plain (sync or async) function. One ``str`` parameter gives the classic
    one-string tool; any other signature a typed tool whose schema comes from the type hints,
    defaults and docstring (``tools.schema.function_schema``)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None, max_threads: int = 4):
        check_timeout("timeout_s", timeout_s, "@tool(timeout_s=10)")
        self.fn = fn
        self.name = name or fn.__name__
        doc_description, self.parameters, self._convert = function_schema(fn, self.name)
        self.description = description or doc_description
        props = list(self.parameters["properties"])
        self.arg_name = props[0] if len(props) == 1 else "input"
        self.timeout_s = timeout_s
        self.threads = ToolThreads(max_threads, self.name)  # sync calls: never asyncio's default executor

    async def call(self, arg: Any) -> ToolOutput:
        """``arg``: the string (one-string tool), or a dict of arguments (checked here when it did
        not come through ``bind``, e.g. a direct call from user code)."""
        if self.takes_object:
            kwargs = check(self.parameters or {}, arg) if isinstance(arg, dict) else self.bind(arg)
            kwargs = {k: self._convert[k](v) if k in self._convert and v is not None else v for k, v in kwargs.items()}
        else:
            kwargs = {self.arg_name: arg}
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(**kwargs)
        else:
            out = await asyncio.wrap_future(self.threads.submit(functools.partial(self.fn, **kwargs)))
        plain = isinstance(out, (ToolOutput, str, bytes, bytearray)) or out is None
        if not plain and not isinstance(out, (int, float)) and jsonable(out):
            out = json.dumps(out, ensure_ascii=False)  # a typed tool may return a dict or a list
        return as_output(out if plain else str(out), self.name)  # a plain function may return a number


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout_s: float | None = None):
    """Decorator: ``@tool`` turns a function into a Tool (docstring = description, type hints and
    defaults = argument schema) and registers it under its name::

        @tool
        def weather(city: str, days: int = 1, units: Literal["metric", "imperial"] = "metric") -> str:
            \"\"\"Forecast for a city.

            Args:
                city: the city name
                days: how many days ahead
            \"\"\"
    """

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        t = FunctionTool(f, name=name, timeout_s=timeout_s)
        register(t.name, lambda **_: t)
        return t

    return wrap(fn) if fn is not None else wrap


class _Factory(Protocol):
    def __call__(self, **options: Any) -> Tool: ...


# -- tools registered in this process (``register`` / ``@tool``); ``tools.registry`` looks them up ----
_REGISTRY: dict[str, _Factory] = {}


def register(name: str, factory: _Factory) -> None:
    _REGISTRY[name] = factory


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
