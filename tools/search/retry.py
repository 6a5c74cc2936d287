"""Politeness and persistence for network backends: an async token bucket and retries with
exponential backoff (only for errors worth retrying: rate limits and timeouts)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from agent.errors import ConfigError
from tools.search.base import BadResponse, EngineTimeout, RateLimited

__all__ = ["RetryPolicy", "TokenBucket", "check_http", "http_call", "with_retries"]

T = TypeVar("T")


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
