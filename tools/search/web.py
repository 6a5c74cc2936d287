"""Web search: the engines ``ddgs`` fronts (DuckDuckGo, Brave, Mojeek, Bing, Wikipedia, ...), or a
SearXNG instance's JSON API, with politeness and failover.

Each engine has its own token bucket (``rate_per_s``, ``burst``). One engine call runs under
``asyncio.timeout(timeout_s)``; rate limits and timeouts are retried with exponential backoff
(``RetryPolicy``); any other failure, or an empty answer, moves on to the next engine. When every
engine failed, ``search`` raises ``SearchUnavailable`` naming each engine's failure, which the tool
shows to the model.

``ddgs`` is synchronous, so it runs in a worker thread (``asyncio.to_thread``); a call abandoned by
the timeout finishes in its thread, bounded by the ``timeout`` given to ``DDGS`` too. The old package
name ``duckduckgo_search`` is accepted when ``ddgs`` is not installed.

``call_engine`` is injectable: ``async (engine, query, k) -> list[Passage]``, raising
``SearchUnavailable`` kinds. Tests use it to inject faults; the default routes ``"searxng"`` to
``url`` over httpx and every other name to ddgs.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any

import httpx

from tools.errors import ConfigError, MissingDependency
from tools.search.base import BadResponse, EngineTimeout, Passage, RateLimited, SearchUnavailable
from tools.search.retry import RetryPolicy, TokenBucket, fetch_json, with_retries

__all__ = ["DEFAULT_ENGINES", "DdgsEngine", "EngineFn", "SearxngEngine", "WebBackend", "import_ddgs"]

EngineFn = Callable[[str, str, int], Awaitable[list[Passage]]]
DEFAULT_ENGINES = ("duckduckgo", "brave", "mojeek", "wikipedia")
# Exceptions from these modules are network or engine failures; anything else is a bug and raises.
_NETWORK_MODULES = ("ddgs", "duckduckgo_search", "primp", "httpx", "httpcore", "requests", "urllib3")


def import_ddgs() -> ModuleType:
    """The ``ddgs`` module, or the older ``duckduckgo_search`` when only that one is installed."""
    for name in ("ddgs", "duckduckgo_search"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependency("web search needs the ddgs package: pip install 'splice[search]'")


def _is_network_error(e: BaseException) -> bool:
    mod = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or mod in _NETWORK_MODULES


def classify_ddgs_error(e: BaseException, engine: str) -> SearchUnavailable:
    names = {c.__name__ for c in type(e).__mro__}
    if "RatelimitException" in names:
        return RateLimited(f"{engine} is rate limiting requests")
    if "TimeoutException" in names:
        return EngineTimeout(f"{engine} timed out")
    return BadResponse(f"{engine} failed ({type(e).__name__}: {str(e)[:160]})")


def _passages_from_ddgs(results: Any, engine: str) -> list[Passage]:
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise BadResponse(f"{engine} returned an unreadable answer")
    return [Passage(str(r.get("title", "")), str(r.get("body", "")), str(r.get("href", "")))
            for r in results if r.get("body") or r.get("title")]


class DdgsEngine:
    """``EngineFn`` over ddgs. ``text_fn(query, engine, k)`` is the blocking call (default:
    ``DDGS(timeout=...).text``); it runs in a worker thread."""

    def __init__(self, timeout_s: float = 10.0, text_fn: Callable[[str, str, int], Any] | None = None):
        self.timeout_s = timeout_s
        self._text_fn = text_fn or self._ddgs_text
        self._module = None if text_fn else import_ddgs()

    def _ddgs_text(self, query: str, engine: str, k: int) -> Any:
        assert self._module is not None
        return self._module.DDGS(timeout=max(1, int(self.timeout_s))).text(query, max_results=k,
                                                                          backend=engine)

    async def __call__(self, engine: str, query: str, k: int) -> list[Passage]:
        try:
            results = await asyncio.to_thread(self._text_fn, query, engine, k)
        except Exception as e:
            if "no results" in str(e).lower():
                return []
            if not _is_network_error(e):
                raise
            raise classify_ddgs_error(e, engine) from e
        return _passages_from_ddgs(results, engine)


class SearxngEngine:
    """``EngineFn`` over a SearXNG instance: ``GET url?q=...&format=json`` ->
    ``{"results": [{"title", "url", "content"}, ...]}``."""

    def __init__(self, url: str, client: httpx.AsyncClient, timeout_s: float = 10.0):
        self.url, self.client, self.timeout_s = url, client, timeout_s

    async def __call__(self, engine: str, query: str, k: int) -> list[Passage]:
        data = await fetch_json(self.client, "GET", self.url, f"searxng at {self.url}", self.timeout_s,
                                params={"q": query, "format": "json"})
        try:
            results = data["results"]
            return [Passage(str(r.get("title", "")), str(r.get("content", "")), str(r.get("url", "")))
                    for r in results[:k]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadResponse(f"searxng at {self.url} returned an unreadable answer") from e


class WebBackend:
    """``SearchBackend`` over web engines tried in order (failover)."""

    name = "web"

    def __init__(self, engines: Sequence[str] | None = None, *, url: str | None = None,
                 timeout_s: float = 10.0, rate_per_s: float = 1.0, burst: int = 2,
                 retry: RetryPolicy | None = None, call_engine: EngineFn | None = None):
        self.engines = tuple(engines or (("searxng",) if url else DEFAULT_ENGINES))
        if "searxng" in self.engines and not url:
            raise ConfigError("engine 'searxng' needs url='http://host:port/search' (a SearXNG instance)")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._buckets = {e: TokenBucket(rate_per_s, burst) for e in self.engines}
        self._client = httpx.AsyncClient() if url else None
        self._call = call_engine or self._router(url)
        self.cache_key = "web:" + ",".join(self.engines) + (f"@{url}" if url else "")

    def _router(self, url: str | None) -> EngineFn:
        searx = SearxngEngine(url, self._client, self.timeout_s) if url and self._client else None
        ddgs = DdgsEngine(self.timeout_s) if any(e != "searxng" for e in self.engines) else None

        async def route(engine: str, query: str, k: int) -> list[Passage]:
            fn = searx if engine == "searxng" else ddgs
            assert fn is not None
            return await fn(engine, query, k)

        return route

    async def _attempt(self, engine: str, query: str, k: int) -> list[Passage]:
        await self._buckets[engine].acquire()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._call(engine, query, k)
        except TimeoutError as e:
            raise EngineTimeout(f"{engine} did not answer within {self.timeout_s:g}s") from e

    async def search(self, query: str, k: int) -> list[Passage]:
        failures: list[str] = []
        answered = False
        for engine in self.engines:
            try:
                passages = await with_retries(lambda e=engine: self._attempt(e, query, k), self.retry)
            except SearchUnavailable as e:
                failures.append(str(e))
                continue
            answered = True
            if passages:
                return passages[:k]
        if not answered:
            raise SearchUnavailable("web search is unavailable (" + "; ".join(failures) + ")")
        return []

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
