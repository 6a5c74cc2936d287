"""A remote retriever speaking Search-R1's ``POST /retrieve``:

request  ``{"queries": ["..."], "topk": k, "return_scores": true}``
response ``{"result": [[{"document": {"contents": "\\"Title\\"\\ntext", "id": ...}, "score": 0.8}, ...]]}``

(``return_scores: false`` servers answer bare documents in place of ``{"document", "score"}``; both
are read). One ``httpx.AsyncClient`` is reused for every call (connection pooling); rate limits,
gateway errors and timeouts are retried with backoff. Bodies are streamed and capped at
``max_body_bytes`` (an endless answer fails fast, as ``BadResponse``, with bounded memory).
"""

from __future__ import annotations

from typing import Any

import httpx

from tools.errors import ConfigError
from tools.search.base import BadResponse, Passage
from tools.search.retry import MAX_BODY_BYTES, RetryPolicy, fetch_json, with_retries

__all__ = ["HttpBackend", "parse_retriever_response"]


def _passage(item: Any) -> Passage:
    doc = item.get("document", item) if isinstance(item, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
        raise BadResponse("the retriever returned a result without document contents")
    first, _, rest = doc["contents"].partition("\n")
    title, text = (first.strip().strip('"'), rest.strip()) if rest else ("", first)
    return Passage(title, text, str(doc.get("id", "")))


def parse_retriever_response(data: Any, k: int) -> list[Passage]:
    """Passages of the first query's result list; ``BadResponse`` for any other shape."""
    try:
        hits = data["result"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise BadResponse("the retriever returned an unreadable answer (no 'result' list)") from e
    if not isinstance(hits, list):
        raise BadResponse("the retriever returned an unreadable answer ('result' is not a list)")
    return [_passage(h) for h in hits[:k]]


class HttpBackend:
    """``SearchBackend`` over a Search-R1 style retriever at ``url`` (the full ``/retrieve`` URL)."""

    name = "http"

    def __init__(self, url: str, *, timeout_s: float = 10.0, retry: RetryPolicy | None = None,
                 max_connections: int = 16, max_body_bytes: int = MAX_BODY_BYTES):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"retriever url must start with http:// or https://, got {url!r} "
                              "(e.g. http://127.0.0.1:8000/retrieve)")
        self.url = url
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.retry = retry or RetryPolicy()
        self.cache_key = f"http:{url}"
        self._client = httpx.AsyncClient(timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=max_connections))

    async def _attempt(self, query: str, k: int) -> list[Passage]:
        body = {"queries": [query], "topk": k, "return_scores": True}
        what = f"the retriever at {self.url}"
        data = await fetch_json(self._client, "POST", self.url, what, self.timeout_s, self.max_body_bytes,
                                json=body)
        return parse_retriever_response(data, k)

    async def search(self, query: str, k: int) -> list[Passage]:
        return await with_retries(lambda: self._attempt(query, k), self.retry)

    async def aclose(self) -> None:
        await self._client.aclose()
