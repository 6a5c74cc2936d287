"""``Sandbox``: one stateful session (one isolated worker) of notebook-like execution."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from sandbox.channel import ProtocolError, WorkerDied, WorkerHandle
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError
from sandbox.pool import WorkerPool
from sandbox.result import PROTOCOL_BROKEN, ExecResult, describe_exit

__all__ = ["Sandbox"]


class Sandbox:
    """A session: variables, imports and files persist across ``run`` calls, like notebook cells.

    A trailing expression is echoed like a REPL (``repr``, unless it is None). A run that hits the
    timeout is first interrupted inside the worker (state survives); code that resists is killed with
    its whole process tree after ``kill_grace_s`` more, and so is a crashed worker: the result then
    has ``restarted=True``, and the next ``run`` gets a fresh worker with empty state.

    ``pool``: a shared ``WorkerPool`` to take the worker from (it stays open after this session);
    without one, the session starts its own worker on first use.
    """

    def __init__(self, config: SandboxConfig | None = None, *, pool: WorkerPool | None = None,
                 **options: Any):
        if config is not None and options:
            raise TypeError("pass either a SandboxConfig or keyword options, not both")
        if pool is not None and (config is not None or options):
            raise TypeError("a pooled Sandbox takes its config from the pool")
        self.config = pool.config if pool is not None else (config or SandboxConfig(**options))
        self._pool = pool
        self._own_pool = pool is None
        self._worker: WorkerHandle | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Sandbox:  # noqa: PYI034 - typing.Self needs 3.11
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Take a worker now (otherwise the first ``run`` does)."""
        async with self._lock:
            await self._ensure_worker()

    async def run(self, code: str) -> ExecResult:
        """Execute ``code`` in the session. Failures caused by the code are results, never raised."""
        async with self._lock:
            worker = await self._ensure_worker()
            started = time.monotonic()
            try:
                raw = await worker.execute(code, self.config.timeout_s, self.config.kill_grace_s)
            except TimeoutError:
                await self._discard()
                return ExecResult.killed(f"timed out after {self.config.timeout_s:g} s and was killed",
                                         time.monotonic() - started, timed_out=True)
            except ProtocolError as e:
                await self._discard()
                return ExecResult.killed(PROTOCOL_BROKEN.format(why=e), time.monotonic() - started)
            except WorkerDied:
                reason = describe_exit(await worker.exit_code(), self.config.memory_mb)
                await self._discard()
                return ExecResult.killed(reason, time.monotonic() - started)
            except BaseException:  # cancelled mid-run: the worker is out of step, so it must go
                await asyncio.shield(self._discard())
                raise
            return ExecResult.from_worker(raw, time.monotonic() - started, self.config.max_output_chars)

    async def _ensure_worker(self) -> WorkerHandle:
        if self._closed:
            raise SandboxError("this Sandbox session is closed")
        if self._worker is None:
            if self._pool is None:
                self._pool = WorkerPool(dataclasses.replace(self.config, pool_size=0))
            self._worker = await self._pool.acquire()
        return self._worker

    async def _discard(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.close()

    async def aclose(self) -> None:
        """Kill this session's worker (and its own pool, if it made one). Idempotent."""
        self._closed = True
        async with self._lock:
            await self._discard()
        if self._own_pool and self._pool is not None:
            await self._pool.aclose()
            self._pool = None
