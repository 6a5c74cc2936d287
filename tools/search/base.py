"""What every search backend shares: the ``Passage`` result, the ``SearchBackend`` interface and the
failure a backend reports when it cannot answer now.

Exceptions (all under ``agent.errors.SearchError``)::

    SearchError                 unusable configuration (missing index, bad URL): raised at construction
     +-- SearchUnavailable      this query got no answer now (network down, rate limited, timed out,
          |                     garbage response, every engine failed); ``SearchTool`` turns it into
          |                     result text the model reads
          +-- RateLimited       the engine said "slow down" (HTTP 429, ddgs RatelimitException): retried
          +-- EngineTimeout     the engine did not answer in time: retried
          +-- BadResponse       the engine answered something unreadable: not retried, next engine
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tools.errors import SearchError

__all__ = [
    "BadResponse",
    "EngineTimeout",
    "Passage",
    "RateLimited",
    "SearchBackend",
    "SearchUnavailable",
    "normalize_query",
]


@dataclass(frozen=True)
class Passage:
    """One search hit: a title, a text snippet and where it came from (URL, file, doc id)."""

    title: str
    text: str
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "text": self.text, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Passage:
        return cls(str(d.get("title", "")), str(d.get("text", "")), str(d.get("source", "")))


@runtime_checkable
class SearchBackend(Protocol):
    """``name`` is shown in tool meta; ``cache_key`` identifies what the backend searches (the index
    file, the URL, the engines), so two backends never share cached results."""

    name: str
    cache_key: str

    async def search(self, query: str, k: int) -> list[Passage]:
        """Up to ``k`` passages, best first. Raises ``SearchUnavailable`` when it cannot answer now."""
        ...

    async def aclose(self) -> None:
        """Release connections and files. Idempotent."""
        ...


class SearchUnavailable(SearchError):
    """The backend could not answer this query now; the message is shown to the model."""


class RateLimited(SearchUnavailable):
    pass


class EngineTimeout(SearchUnavailable):
    pass


class BadResponse(SearchUnavailable):
    pass


def normalize_query(query: str) -> str:
    """Whitespace-collapsed query: the form used for searching and as the cache key."""
    return " ".join(query.split())
