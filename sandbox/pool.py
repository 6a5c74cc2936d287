"""A pool of pre-started workers, so a session starts without waiting for a process or container.

Lifecycle: ``async with WorkerPool(cfg) as pool`` (or ``await pool.start()`` ... ``await pool.aclose()``).
``start`` probes the host and launches ONE filler task owned by the pool; it keeps ``pool_size``
workers ready (each has finished its handshake: limits and seccomp are in place). ``acquire`` hands a
ready worker to a session for good: workers are never reused across sessions. ``aclose`` cancels and
awaits the filler and kills every idle worker; no task outlives the pool. Sessions kill their own
worker on ``Sandbox.aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from sandbox.channel import WorkerHandle
from sandbox.config import SandboxConfig
from sandbox.docker import DockerBackend
from sandbox.errors import SandboxError
from sandbox.process import ProcessBackend

__all__ = ["WorkerPool", "make_backend"]

log = logging.getLogger(__name__)
RETRY_S = 1.0


def make_backend(config: SandboxConfig) -> Any:
    if config.backend == "docker":
        return DockerBackend(config)
    return ProcessBackend(config)


class WorkerPool:
    def __init__(self, config: SandboxConfig | None = None, **options: Any):
        self.config = config or SandboxConfig(**options)
        self.size = self.config.pool_size
        self.backend = make_backend(self.config)
        self._ready: deque[WorkerHandle] = deque()
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    async def __aenter__(self) -> WorkerPool:  # noqa: PYI034 - typing.Self needs 3.11
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise SandboxError("this WorkerPool is closed")
        self._started = True
        await self.backend.prepare()
        if self.size > 0:
            self._wanted.set()
            self._filler = asyncio.create_task(self._fill(), name="splice-sandbox-pool-filler")

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def acquire(self) -> WorkerHandle:
        """A ready worker if there is one, else a freshly started one (a cold start)."""
        await self.start()
        if self._closed:
            raise SandboxError("this WorkerPool is closed")
        while self._ready:
            worker = self._ready.popleft()
            self._wanted.set()
            if worker.alive():
                return worker
            await worker.close()
        return await self._start_uninterrupted()

    async def wait_ready(self, count: int | None = None, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` (default: pool_size) workers are ready (for benchmarks and tests)."""
        want = self.size if count is None else min(count, self.size)
        async with asyncio.timeout(timeout_s):
            while len(self._ready) < want:
                await asyncio.sleep(0.005)

    async def _fill(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size:
                try:
                    worker = await self._start_uninterrupted()
                except SandboxError as e:
                    log.warning("sandbox pool could not start a worker (retrying in %.0f s): %s", RETRY_S, e)
                    await asyncio.sleep(RETRY_S)
                    continue
                self._ready.append(worker)

    async def _start_uninterrupted(self) -> WorkerHandle:
        """Start a worker; if cancelled meanwhile, let the start finish, kill the worker, re-raise.
        (Cancelling a process spawn half-way makes asyncio reap the child behind its own back.)"""
        start = asyncio.ensure_future(self.backend.start_worker())
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await start).close()
            raise

    async def aclose(self) -> None:
        """Stop the filler and kill idle workers. Idempotent."""
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
            self._filler = None
        while self._ready:
            await self._ready.popleft().close()
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()
