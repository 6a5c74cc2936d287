"""The ``search`` tool and its backends: ``local`` (SQLite FTS5 BM25 over your documents), ``web``
(ddgs engines or SearXNG, rate limited, with retries and failover) and ``http`` (a Search-R1 style
``/retrieve`` server), with an optional on-disk result cache. See docs/search.md."""

from tools.search.base import (
    BadResponse,
    EngineTimeout,
    Passage,
    RateLimited,
    SearchBackend,
    SearchUnavailable,
)
from tools.search.cache import SearchCache
from tools.search.format import format_results
from tools.search.local import IndexStats, LocalBackend, LocalIndex, build_index
from tools.search.remote import HttpBackend
from tools.search.retry import RetryPolicy, TokenBucket
from tools.search.tool import SearchConfig, SearchTool, make_backend
from tools.search.web import WebBackend

TOOL = SearchTool

__all__ = [
    "BadResponse",
    "EngineTimeout",
    "HttpBackend",
    "IndexStats",
    "LocalBackend",
    "LocalIndex",
    "Passage",
    "RateLimited",
    "RetryPolicy",
    "SearchBackend",
    "SearchCache",
    "SearchConfig",
    "SearchTool",
    "SearchUnavailable",
    "TokenBucket",
    "WebBackend",
    "build_index",
    "format_results",
    "make_backend",
]
