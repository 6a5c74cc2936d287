"""The ``search`` tool: one query in, numbered passages out, from a local index, the web or a
remote retriever, optionally through an on-disk cache.

``call`` never raises for what the model or the network caused (an empty query, no results, a
rate limit, a timeout): those come back as short result text with ``error=True``. Unusable
configuration (an unknown backend, a missing index file) raises at construction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tools.base import Tool, ToolOutput, make_options
from tools.errors import ConfigError, SearchError
from tools.search.base import Passage, SearchBackend, SearchUnavailable, normalize_query
from tools.search.cache import SearchCache
from tools.search.format import DESCRIPTION, EXAMPLES, format_failure, format_results
from tools.search.local import LocalBackend
from tools.search.remote import HttpBackend
from tools.search.retry import RetryPolicy
from tools.search.web import WebBackend

__all__ = ["SearchConfig", "SearchTool", "make_backend"]

BACKENDS = ("local", "web", "http")
MAX_QUERY_CHARS = 500


@dataclass
class SearchConfig:
    backend: str = field(default="auto", metadata={"help": "auto (local with an index, http with a url, else "
                                                          "web) | local | web | http"})
    index: str = field(default="", metadata={"help": "local backend: the SQLite index built by "
                                             "`agent index build`"})
    url: str = field(default="", metadata={"help": "http backend: the retriever's /retrieve URL; web "
                                           "backend: a SearXNG /search URL"})
    engines: list[str] = field(default_factory=list, metadata={
        "help": "web backend: engines tried in order (ddgs names, or searxng); default "
                "duckduckgo,brave,mojeek,wikipedia"})
    top_k: int = field(default=3, metadata={"help": "passages per result"})
    max_chars: int = field(default=600, metadata={"help": "characters kept per passage snippet"})
    cache: str | None = field(default=None, metadata={"help": "SQLite file caching results "
                                                      "(None: no cache)"})
    timeout_s: float = field(default=30.0, metadata={"help": "limit for one search, retries included"})
    engine_timeout_s: float = field(default=10.0, metadata={"help": "limit for one engine request"})
    rate_per_s: float = field(default=1.0, metadata={"help": "web backend: requests per second per "
                                                     "engine (0: unlimited)"})
    retries: int = field(default=3, metadata={"help": "tries per engine on rate limits and timeouts"})

    def __post_init__(self) -> None:
        if self.backend == "auto":
            self.backend = "local" if self.index else "http" if self.url else "web"
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown search backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if not 1 <= self.top_k <= 50:
            raise ConfigError(f"top_k must be between 1 and 50, got {self.top_k}")
        if self.max_chars < 50:
            raise ConfigError(f"max_chars must be >= 50, got {self.max_chars}")
        if self.timeout_s <= 0 or self.engine_timeout_s <= 0 or self.retries < 1:
            raise ConfigError("timeout_s and engine_timeout_s must be > 0 and retries >= 1")
        if self.backend == "http" and not self.url:
            raise ConfigError("the http search backend needs url=... (e.g. http://127.0.0.1:8000/retrieve)")
        if isinstance(self.engines, str):
            self.engines = [e for e in self.engines.split(",") if e]


def _clip_query(query: str) -> str:
    """At most ``MAX_QUERY_CHARS`` characters, cut between words: engines reject longer queries."""
    if len(query) <= MAX_QUERY_CHARS:
        return query
    head = query[:MAX_QUERY_CHARS].rpartition(" ")[0]
    return head or query[:MAX_QUERY_CHARS]


def make_backend(cfg: SearchConfig) -> SearchBackend:
    retry = RetryPolicy(attempts=cfg.retries)
    if cfg.backend == "local":
        if not cfg.index:
            raise SearchError("the local search backend needs an index: build one with `agent index "
                              "build DOCS... -o index.db` and pass index='index.db' (--search-index), "
                              "or use backend='web'")
        return LocalBackend(cfg.index)
    if cfg.backend == "web":
        return WebBackend(cfg.engines or None, url=cfg.url or None, timeout_s=cfg.engine_timeout_s,
                          rate_per_s=cfg.rate_per_s, retry=retry)
    return HttpBackend(cfg.url, timeout_s=cfg.engine_timeout_s, retry=retry)


class SearchTool(Tool):
    name = "search"
    arg_name = "query"
    options = SearchConfig
    description = DESCRIPTION
    examples = EXAMPLES

    def __init__(self, **options: Any):
        cfg = make_options(SearchConfig, options, "search")
        self._setup(cfg, make_backend(cfg))

    @classmethod
    def from_backend(cls, backend: SearchBackend, config: SearchConfig | None = None) -> SearchTool:
        """A tool over an already built backend (a custom one, or one with injected engines)."""
        self = cls.__new__(cls)
        self._setup(config or SearchConfig(backend="web"), backend)
        return self

    def _setup(self, cfg: SearchConfig, backend: SearchBackend) -> None:
        self.config = cfg
        self.backend = backend
        self.timeout_s = cfg.timeout_s + 2.0  # the runtime's limit: ours fires first, with a clear text
        self.cache = SearchCache(cfg.cache) if cfg.cache else None
        self._closed = False

    async def _lookup(self, query: str) -> tuple[list[Passage], bool]:
        k = self.config.top_k
        if self.cache is None:
            return await self.backend.search(query, k), False
        return await self.cache.get_or_search(self.backend.cache_key, query, k,
                                              lambda: self.backend.search(query, k))

    async def call(self, arg: str) -> ToolOutput:
        query = _clip_query(normalize_query(arg))
        meta: dict[str, Any] = {"backend": self.backend.name, "cache_hit": False, "n_results": 0}
        if not query:
            return ToolOutput(format_failure("the query is empty; write a few keywords"), True, meta)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                passages, hit = await self._lookup(query)
        except TimeoutError:
            reason = f"no answer within {self.config.timeout_s:g}s; try again or use other keywords"
            return ToolOutput(format_failure(reason), True, meta)
        except SearchUnavailable as e:
            return ToolOutput(format_failure(str(e)), True, meta)
        meta.update(cache_hit=hit, n_results=len(passages))
        return ToolOutput(format_results(query, passages, self.config.max_chars), False, meta)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.backend.aclose()
        finally:
            if self.cache is not None:
                await self.cache.aclose()

    async def __aenter__(self) -> SearchTool:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
