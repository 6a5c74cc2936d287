"""Tools from an MCP server over stdio: ``--tools "mcp:python server.py --flag"``.

Every tool the server lists (``tools/list``) becomes a splice ``Tool`` with the server's input
schema: the runtime checks a call against it before anything is sent (a bad call is an error result,
as for ``@tool`` functions), and the server's answer is the result: its text content (structured
content as JSON when there is no text), ``isError`` as ``error``. Needs ``pip install 'splice[mcp]'``.

Lifecycle: one server process per episode.
  * Building an Agent starts the server once to list its tools, then stops it.
  * In an episode, the first call to any of the server's tools starts a process; the episode's later
    calls to any tool of that server go to the same process, so server-side state lasts for the
    episode (like the python tool's) and never leaks into another. An episode is recognised by the
    asyncio task that runs it (every splice episode runs in its own task, or one after another).
  * The process stops when the episode ends, fails or is cancelled: the tool session closes in the
    episode's ``AsyncExitStack``, which closes the server's stdin, then sends SIGTERM, then SIGKILL
    (the ``mcp`` package's shutdown). A server that died mid-episode is restarted on the next call.
The ``mcp`` client runs on anyio, whose cancel scopes must close in the task that opened them; each
connection therefore lives in a task of its own, which the episode's session starts and awaits.
The server's stderr goes to a temporary file, quoted when the server fails to start.

Environment: the server gets the ``mcp`` package's default environment (HOME, PATH, USER, ...),
not the caller's secrets; pass ``env=`` (library) for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prompts import message
from tools.base import Tool, ToolCallable, ToolOutput
from tools.errors import ToolError, require

__all__ = ["MCPServer", "MCPTool", "mcp_tools"]


def mcp_tools(command: str | Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
              start_timeout_s: float = 30.0, timeout_s: float | None = None, **_: Any) -> list[MCPTool]:
    """The tools of the MCP server ``command`` (a shell-style string or an argv list), listed by
    starting it once. Blocks; safe to call with or without a running event loop."""
    server = MCPServer(command, env=env, cwd=cwd, start_timeout_s=start_timeout_s)
    return [MCPTool(server, spec, timeout_s) for spec in server.list_tools_sync()]


class MCPServer:
    """One MCP server command. ``connect()`` gives the calling episode its connection."""

    def __init__(self, command: str | Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 start_timeout_s: float = 30.0):
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise ToolError("mcp: give the command that starts the server, e.g. mcp:python server.py")
        self.argv, self.env, self.cwd = argv, env, cwd
        self.label = shlex.join(argv)
        self.start_timeout_s = start_timeout_s
        self._live: dict[asyncio.Task, _Connection] = {}  # episode task -> its connection

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_Connection]:
        """The current episode's connection, started on first use and stopped when its last user
        (one session per tool of this server) closes."""
        task = asyncio.current_task()
        assert task is not None
        conn = self._live.get(task)
        if conn is None or conn.closed:
            conn = _Connection(self)
            await conn.start()
            self._live[task] = conn
        conn.users += 1
        try:
            yield conn
        finally:
            conn.users -= 1
            if conn.users == 0:
                if self._live.get(task) is conn:
                    del self._live[task]
                await conn.aclose()

    def list_tools_sync(self) -> list[dict[str, Any]]:
        """``tools/list`` on a server started for the purpose, in a thread with its own loop."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["tools"] = asyncio.run(self.list_tools())
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        thread = threading.Thread(target=work, name="splice-mcp-list", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["tools"]

    async def list_tools(self) -> list[dict[str, Any]]:
        async with self.connect() as conn:
            tools: list[dict[str, Any]] = []
            cursor = None
            while True:
                if cursor is None:
                    page = await conn.session.list_tools()
                else:  # mcp 2.x takes params=, 1.x cursor=
                    page = await _next_page(conn.session, cursor)
                for t in page.tools:
                    schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema", None) or {}
                    tools.append({"name": t.name, "description": t.description or t.name, "parameters": schema})
                cursor = getattr(page, "next_cursor", None) or getattr(page, "nextCursor", None)
                if not cursor:
                    return tools


async def _next_page(session: Any, cursor: str) -> Any:
    try:
        from mcp.types import PaginatedRequestParams

        return await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
    except (ImportError, TypeError):
        return await session.list_tools(cursor=cursor)


class _Connection:
    """One server process and its MCP session, owned by a task of its own (see the module doc)."""

    def __init__(self, server: MCPServer):
        self.server = server
        self.session: Any = None
        self.users = 0
        self.closed = False
        self._stop = asyncio.Event()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name=f"mcp {self.server.label}")
        try:
            await asyncio.wait_for(asyncio.shield(self._started), self.server.start_timeout_s)
        except BaseException as e:
            await self._shutdown()
            tail = self._stderr_tail()
            self._errlog.close()
            if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            why = f"it did not answer within {self.server.start_timeout_s:g} s" if isinstance(e, TimeoutError) \
                else _describe(e)
            raise ToolError(f"MCP server ({self.server.label}) failed to start: {why}{tail}") from e

    async def _main(self) -> None:
        mcp = require("mcp", "mcp")
        from mcp.client.stdio import stdio_client

        params = mcp.StdioServerParameters(command=self.server.argv[0], args=self.server.argv[1:],
                                           env=self.server.env, cwd=self.server.cwd)
        try:
            async with stdio_client(params, errlog=self._errlog) as (read, write), \
                    mcp.ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self._started.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            if not self._started.done():
                self._started.set_exception(e if isinstance(e, Exception) else ToolError("cancelled"))
            if not isinstance(e, Exception):
                raise
        finally:
            self.closed = True

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutput:
        try:
            result = await self.session.call_tool(name, args)
        except Exception as e:
            if not _is_protocol_error(e):
                self.closed = True  # the transport broke: the next call starts a new process
            return ToolOutput(message("tool_failed", tool=name, error=_describe(e)), error=True)
        return _to_output(result)

    async def aclose(self) -> None:
        """Stop the server and wait until it is gone. The wait is shielded: if the caller is
        cancelled again meanwhile, the worker still finishes the mcp package's shutdown (stdin
        closed, SIGTERM, SIGKILL) on its own."""
        try:
            await self._shutdown()
        finally:
            self._errlog.close()

    async def _shutdown(self) -> None:
        self._stop.set()
        task = self._task
        if task is not None and not task.done():
            if not self._started.done():
                task.cancel()  # still starting: nothing to shut down gracefully
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we were cancelled, not the worker
        if self._started.done() and not self._started.cancelled():
            self._started.exception()  # retrieved: no "never retrieved" warning
        self.closed = True

    def _stderr_tail(self) -> str:
        with contextlib.suppress(Exception):
            self._errlog.seek(0)
            tail = self._errlog.read()[-800:].strip()
            if tail:
                return f"; its stderr ends with:\n{tail}"
        return ""


def _describe(e: BaseException) -> str:
    inner = getattr(e, "exceptions", None)  # an exception group (anyio task groups raise them)
    if isinstance(inner, tuple) and inner:
        return "; ".join(_describe(x) for x in inner)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _is_protocol_error(e: Exception) -> bool:
    """An error the server answered with (the session still works), not a broken transport."""
    from mcp.shared import exceptions

    cls = getattr(exceptions, "MCPError", None) or getattr(exceptions, "McpError", None)
    code = getattr(getattr(e, "error", None), "code", None)
    return cls is not None and isinstance(e, cls) and code != -32000  # -32000: connection closed


def _to_output(result: Any) -> ToolOutput:
    texts, other = [], []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(block.text)
        else:
            mime = getattr(block, "mime_type", None) or getattr(block, "mimeType", None) or ""
            other.append(f"[{kind or 'content'}: {mime}]")
    structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
    if not texts and structured is not None:
        texts.append(json.dumps(structured, ensure_ascii=False))
    error = bool(getattr(result, "is_error", False) or getattr(result, "isError", False))
    text = "\n".join(texts + other)
    return ToolOutput(message("tool_error", text=text) if error and not text.startswith("error") else text, error=error)


class MCPTool(Tool):
    """One tool of an MCP server; its session shares the episode's connection to the server."""

    def __init__(self, server: MCPServer, spec: dict[str, Any], timeout_s: float | None = None):
        self.server = server
        self.name = spec["name"]
        self.description = spec["description"]
        self.parameters = spec["parameters"] or {"type": "object", "properties": {}}
        self.timeout_s = timeout_s

    @property
    def takes_object(self) -> bool:
        return True  # MCP arguments are always an object, even with one string property

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[ToolCallable]:
        async with contextlib.AsyncExitStack() as stack:
            conn = await stack.enter_async_context(self.server.connect())

            async def call(args: dict[str, Any]) -> ToolOutput:
                nonlocal conn
                if conn.closed:  # the server died: this episode gets a new one
                    conn = await stack.enter_async_context(self.server.connect())
                return await conn.call(self.name, args)

            yield call

    async def call(self, arg: Any) -> ToolOutput:
        """A one-off call on a server started for it."""
        async with self.session() as run:
            return await run(arg if isinstance(arg, dict) else self.bind(arg))

    def __repr__(self) -> str:
        return f"<MCPTool {self.name!r} of {self.server.label!r}>"
