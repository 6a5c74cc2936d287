"""Politeness and persistence for network backends: an async token bucket, retries with
exponential backoff (only for errors worth retrying: rate limits and timeouts), and ``fetch_json``:
one HTTP request whose body is streamed and capped (``MAX_BODY_BYTES``), so an endless or huge
answer costs at most the cap in memory, and whose JSON is parsed without letting a deeply nested
document raise ``RecursionError``."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tools.errors import ConfigError
from tools.search.base import BadResponse, EngineTimeout, RateLimited

__all__ = ["MAX_BODY_BYTES", "RetryPolicy", "TokenBucket", "check_http", "fetch_json", "http_call",
           "parse_json", "with_retries"]

T = TypeVar("T")
MAX_BODY_BYTES = 8 * 1024 * 1024  # 50 passages of search results fit many times over


class TokenBucket:
    """At most ``rate_per_s`` acquisitions per second on average, ``burst`` at once.

    Waiters queue in arrival order (the lock is FIFO) and wait with ``asyncio.sleep``, so the event
    loop never blocks. ``rate_per_s <= 0`` means unlimited."""

    def __init__(self, rate_per_s: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        if burst < 1:
            raise ConfigError(f"burst must be >= 1, got {burst}")
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            self._refill()
            while self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the wait before try n+1 is ``base_delay_s * 2**n`` (capped at
    ``max_delay_s``) times a random factor in [0.5, 1] so parallel clients do not retry in step."""

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ConfigError("retries need attempts >= 1 and non-negative delays")

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2**attempt) * random.uniform(0.5, 1.0)


async def with_retries(fn: Callable[[], Awaitable[T]], policy: RetryPolicy,
                       retry_on: tuple[type[BaseException], ...] = (RateLimited, EngineTimeout)) -> T:
    """``await fn()``, retried on ``retry_on`` errors per ``policy``; the last error propagates."""
    for attempt in range(policy.attempts):
        try:
            return await fn()
        except retry_on:
            if attempt == policy.attempts - 1:
                raise
            await asyncio.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def check_http(status: int, what: str) -> None:
    """Raise the ``SearchUnavailable`` kind an HTTP status calls for (nothing for 2xx)."""
    if 200 <= status < 300:
        return
    if status in (429, 503):
        raise RateLimited(f"{what} is rate limiting requests (HTTP {status})")
    if status in (502, 504):
        raise EngineTimeout(f"{what} timed out behind a gateway (HTTP {status})")
    raise BadResponse(f"{what} answered HTTP {status}")


async def http_call(fn: Callable[[], Awaitable[T]], what: str, timeout_s: float) -> T:
    """``await fn()`` (an httpx request) under ``timeout_s``, with transport errors turned into
    ``SearchUnavailable`` kinds: timeouts into ``EngineTimeout``, others into ``BadResponse``."""
    import httpx

    try:
        async with asyncio.timeout(timeout_s):
            return await fn()
    except (TimeoutError, httpx.TimeoutException) as e:
        raise EngineTimeout(f"{what} did not answer within {timeout_s:g}s") from e
    except httpx.HTTPError as e:
        raise BadResponse(f"{what} could not be reached ({type(e).__name__}: {e})") from e


async def _read_capped(response: Any, what: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadResponse(f"{what} announced {int(declared):,} bytes, over the {max_bytes:,}-byte limit")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise BadResponse(f"{what} sent more than {max_bytes:,} bytes; the answer was cut off unread")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, what: str) -> Any:
    """JSON of a response body; ``BadResponse`` for anything unreadable, nesting too deep included."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        kind = "JSON nested too deeply" if isinstance(e, RecursionError) else "not JSON"
        raise BadResponse(f"{what} returned an unreadable answer ({kind})") from None


async def fetch_json(client: Any, method: str, url: str, what: str, timeout_s: float,
                     max_bytes: int = MAX_BODY_BYTES, **kw: Any) -> Any:
    """One request on an ``httpx.AsyncClient``: the status checked (``check_http``), the body streamed
    up to ``max_bytes`` and parsed as JSON, all under ``timeout_s``. Failures are the
    ``SearchUnavailable`` kinds ``http_call`` raises."""

    async def go() -> Any:
        async with client.stream(method, url, **kw) as response:
            check_http(response.status_code, what)
            return await _read_capped(response, what, max_bytes)

    return parse_json(await http_call(go, what, timeout_s), what)
