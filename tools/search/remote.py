"""A remote retriever speaking Search-R1's ``POST /retrieve``:

request  ``{"queries": ["..."], "topk": k, "return_scores": true}``
response ``{"result": [[{"document": {"contents": "\\"Title\\"\\ntext", "id": ...}, "score": 0.8}, ...]]}``

(``return_scores: false`` servers answer bare documents in place of ``{"document", "score"}``; both
are read). One ``httpx.AsyncClient`` is reused for every call (connection pooling); rate limits,
gateway errors and timeouts are retried with backoff.
"""

from __future__ import annotations

from typing import Any

import httpx

from agent.errors import ConfigError
from tools.search.base import BadResponse, Passage
from tools.search.retry import RetryPolicy, check_http, http_call, with_retries

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
                 max_connections: int = 16):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"retriever url must start with http:// or https://, got {url!r} "
                              "(e.g. http://127.0.0.1:8000/retrieve)")
        self.url = url
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.cache_key = f"http:{url}"
        self._client = httpx.AsyncClient(timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=max_connections))

    async def _attempt(self, query: str, k: int) -> list[Passage]:
        body = {"queries": [query], "topk": k, "return_scores": True}
        what = f"the retriever at {self.url}"
        resp = await http_call(lambda: self._client.post(self.url, json=body), what, self.timeout_s)
        check_http(resp.status_code, what)
        try:
            data = resp.json()
        except ValueError as e:
            raise BadResponse(f"{what} returned something that is not JSON") from e
        return parse_retriever_response(data, k)

    async def search(self, query: str, k: int) -> list[Passage]:
        return await with_retries(lambda: self._attempt(query, k), self.retry)

    async def aclose(self) -> None:
        await self._client.aclose()
