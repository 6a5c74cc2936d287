"""The event-loop side shared by the continuous-batching backends (``batched``, ``llama_cpp`` with
``n_seq > 1``): requests come in, streams close, sequences are released, the loop stops. Each
backend's scheduler subclasses ``DecodeLoop`` and supplies ``_run`` (its decode loop) and
``_fail_pending`` (hand an error to every waiting stream)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from agent.errors import ModelError

__all__ = ["DecodeLoop"]

log = logging.getLogger("splice.backends")


class DecodeLoop:
    label = "backend"  # in error messages: "the {label} is closed"

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.incoming: deque[Any] = deque()  # not yet planned (some wait for a free slot)
        self.closing: list[Any] = []
        self.releasing: list[Any] = []
        self.stopping = False
        self.error: BaseException | None = None
        self.steps = 0

    def start(self, name: str) -> None:
        self.task = self.loop.create_task(self._run(), name=name)

    async def _run(self) -> None:
        raise NotImplementedError

    def _fail_pending(self, e: BaseException) -> None:
        raise NotImplementedError

    def submit(self, req: Any) -> None:
        if self.error is not None or self.stopping:
            req.out.put_nowait(self.error or ModelError(f"the {self.label} is closed"))
            return
        self.incoming.append(req)
        self.wake.set()

    def close(self, req: Any) -> None:
        req.closed = True
        self.closing.append(req)
        self.wake.set()

    def release(self, st: Any) -> None:
        self.releasing.append(st)
        self.wake.set()

    async def stream(self, req: Any, what: str) -> Any:
        """Submit ``req`` and yield its tokens as they come (``req.out``: (id, log-prob) pairs, then
        None; or an exception, raised as ModelError naming ``what``), recording each in ``req.seq``;
        closing the iterator closes the request."""
        self.submit(req)
        try:
            while (item := await req.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise ModelError(f"{what} failed: {type(item).__name__}: {item}") from item
                tok, logprob = item
                req.seq.record(tok, logprob)
                yield tok
        finally:
            self.close(req)

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        try:
            await self.task
        except Exception as e:  # already handed to every waiting stream
            log.debug("decode loop had failed: %r", e)
        self._fail_pending(ModelError(f"the {self.label} was closed while generating"))
