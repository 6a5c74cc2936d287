"""The ``python`` tool: stateful Python execution in the sandbox, one session per episode.

The tool owns a ``WorkerPool`` (started on first use, closed by ``aclose``); each episode's
``session()`` takes one worker from it on its first call only, so episodes that never run code cost
nothing. Whatever the code does (raise, loop, crash, exhaust memory) comes back as a ToolOutput with
``error=True``; only a broken sandbox backend raises (``SandboxError``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sandbox import ExecResult, Sandbox, SandboxConfig, WorkerPool
from tools.base import Tool, ToolCallable, ToolOutput

__all__ = ["PythonTool"]

DESCRIPTION = (
    "Run Python 3 code in a sandbox and see what it prints. State persists between calls within this "
    "conversation: variables, functions, imports and files in the working directory stay, like cells "
    "of a notebook. The value of a final bare expression is shown, as in a REPL. There is no network "
    "access; each call has a time limit and a memory limit. Use print() to see results."
)
EXAMPLES = (
    ("print(12 * 34 + 5)", "413"),
    ("words = 'the quick brown fox'.split()\nlen(words)", "4"),
    ("sorted(words, key=len)[-1]", "'quick'"),
)


class PythonTool(Tool):
    name = "python"
    arg_name = "code"
    options = SandboxConfig
    description = DESCRIPTION
    examples = EXAMPLES

    def __init__(self, backend: str = "process", timeout_s: float = 10.0, memory_mb: int = 512,
                 max_output_chars: int = 8000, pool_size: int = 2, **options: Any):
        self.config = SandboxConfig(backend=backend, timeout_s=timeout_s, memory_mb=memory_mb,
                                    max_output_chars=max_output_chars, pool_size=pool_size, **options)
        # The whole call may take the code's limit, a hard kill and a restart: leave room for them.
        self.timeout_s = timeout_s + self.config.kill_grace_s + 5.0
        self._pool: WorkerPool | None = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> WorkerPool:
        async with self._pool_lock:
            if self._pool is None:
                pool = WorkerPool(self.config)
                await pool.start()
                self._pool = pool
            return self._pool

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[ToolCallable]:
        """One sandbox session per episode, opened lazily on the first call."""
        box: Sandbox | None = None

        async def call(code: str) -> ToolOutput:
            nonlocal box
            if box is None:
                box = Sandbox(pool=await self._get_pool())
            return to_output(await box.run(code))

        try:
            yield call
        finally:
            if box is not None:
                await box.aclose()

    async def call(self, arg: str) -> ToolOutput:
        """A one-off run in a fresh session (no state kept)."""
        async with self.session() as run:
            return await run(arg)

    async def aclose(self) -> None:
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


def to_output(r: ExecResult) -> ToolOutput:
    meta = {"duration_s": round(r.duration_s, 6), "timed_out": r.timed_out, "truncated": r.truncated,
            "restarted": r.restarted}
    return ToolOutput(text=r.to_text(), error=bool(r.error), meta=meta)


TOOL = PythonTool
