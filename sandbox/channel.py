"""The host side of one worker: framed JSON over a byte stream, plus the means to kill it.

Backends differ only in how they start a worker and what "kill" means; both hand back a
``WorkerHandle``. Every frame from the worker is untrusted (user code shares its process), so sizes
are capped and malformed frames count as a dead worker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import marshal
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from sandbox.errors import SandboxError

__all__ = ["BOOTSTRAP", "ByteReader", "ProtocolError", "WorkerDied", "WorkerHandle", "worker_code",
           "worker_source"]

HEADER = struct.Struct(">I")


class WorkerDied(Exception):
    """The worker closed its end or broke the protocol (internal: becomes result text)."""


class ProtocolError(WorkerDied):
    """The worker is alive but sent a frame the host rejects (too large, not JSON, nested too deeply,
    not an object, out of step): user code wrote to the protocol channel."""


class ByteReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


# Reads one length-prefixed marshalled code object from stdin (unbuffered, so the frames after it
# stay in the pipe) and runs it as __main__.
BOOTSTRAP = ("import os, marshal\nn = int.from_bytes(os.read(0, 4), 'big'); b = b''\n"
             "while len(b) < n: b += os.read(0, n - len(b))\nexec(marshal.loads(b))")


@functools.cache
def worker_source() -> str:
    return Path(__file__).with_name("_worker.py").read_text()


@functools.cache
def worker_code() -> bytes:
    """The worker compiled once per host process, as a frame for ``BOOTSTRAP``: compiling its source
    costs ~10 ms per worker start. Only valid for an interpreter of this very Python version."""
    data = marshal.dumps(compile(worker_source(), "<splice-worker>", "exec"))
    return HEADER.pack(len(data)) + data


def encode(obj: dict[str, Any]) -> bytes:
    """Host -> worker frames are ``marshal`` (the worker need not import json); worker -> host frames
    are JSON, which is safe to parse from an untrusted sender. Never unmarshal worker output."""
    body = marshal.dumps(obj)
    return HEADER.pack(len(body)) + body


class WorkerHandle:
    """A started worker. ``kill`` tears down its whole process tree; ``exit_code`` reports how it
    ended (None when unknown)."""

    def __init__(self, reader: ByteReader, writer: asyncio.StreamWriter | Any,
                 kill: Callable[[], Awaitable[None]], exit_code: Callable[[], Awaitable[int | None]],
                 max_frame: int, label: str, alive: Callable[[], bool] = lambda: True,
                 exit_wait_s: float = 2.0):
        self._reader, self._writer = reader, writer
        self._kill, self._exit_code, self._alive = kill, exit_code, alive
        self.max_frame = max_frame
        self.exit_wait_s = exit_wait_s
        self.label = label
        self.closed = False
        self._seq = 0

    async def handshake(self, cfg: dict[str, Any], timeout_s: float, preamble: bytes = b"") -> dict[str, Any]:
        """Send the config frame (after ``preamble``: the worker code, for ``BOOTSTRAP``)."""
        try:
            await self._send(cfg, preamble)
            async with asyncio.timeout(timeout_s):
                reply = await self._receive()
        except (WorkerDied, TimeoutError) as e:
            code = await self.exit_code() if not isinstance(e, TimeoutError) else None
            await self.close()
            raise SandboxError(f"sandbox worker {self.label} failed to start (exit code {code}): {e}") from e
        except BaseException:  # cancelled while starting: leave no process behind
            await self.close()
            raise
        if not reply.get("ready"):
            await self.close()
            why = reply.get("error") or f"unexpected first frame {reply!r:.200}"
            raise SandboxError(f"sandbox worker {self.label} failed to start: {why}")
        return reply

    async def execute(self, code: str, timeout_s: float, grace_s: float) -> dict[str, Any]:
        """Run code; raises TimeoutError past ``timeout_s + grace_s`` and WorkerDied on EOF or on a
        reply out of step (each request carries a sequence number the worker echoes)."""
        self._seq += 1
        await self._send({"code": code, "timeout_s": timeout_s, "seq": self._seq})
        async with asyncio.timeout(timeout_s + grace_s):
            reply = await self._receive()
        if reply.get("seq") != self._seq:
            raise ProtocolError(f"reply out of step (seq {reply.get('seq')!r}, expected {self._seq})")
        return reply

    async def _send(self, obj: dict[str, Any], preamble: bytes = b"") -> None:
        try:
            self._writer.write(preamble + encode(obj))
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as e:
            raise WorkerDied(f"write failed: {e}") from e

    async def _receive(self) -> dict[str, Any]:
        try:
            (size,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame}")
            body = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            raise WorkerDied(str(e) or type(e).__name__) from e
        try:
            frame = json.loads(body)
        except ValueError as e:
            raise ProtocolError(f"frame is not JSON: {str(e)[:200]}") from e
        except RecursionError as e:
            raise ProtocolError("frame is nested too deeply") from e
        if not isinstance(frame, dict):
            raise ProtocolError("frame is not an object")
        return frame

    def alive(self) -> bool:
        return not self.closed and self._alive()

    async def exit_code(self) -> int | None:
        try:
            async with asyncio.timeout(self.exit_wait_s):
                return await self._exit_code()
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Kill the worker and its whole tree. Idempotent; never raises for a dead worker."""
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.close()
        except (OSError, RuntimeError):
            pass
        await self._kill()
