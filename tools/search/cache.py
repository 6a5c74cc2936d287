"""An on-disk SQLite cache of search results keyed by (backend, query, k), so evals and RL runs are
reproducible and the web is not asked the same question twice.

Reads and writes run in a worker thread (``asyncio.to_thread``) behind one lock, so the event loop
never blocks on disk. Concurrent lookups of the same key are single-flight: the first caller
computes, the others wait and then read the cached value (a hit). Failures are never cached.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tools.errors import SearchError
from tools.search.base import Passage

__all__ = ["SearchCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    backend TEXT NOT NULL, query TEXT NOT NULL, k INTEGER NOT NULL,
    passages TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (backend, query, k)
) WITHOUT ROWID;
"""


class SearchCache:
    """``await cache.get_or_search(backend_key, query, k, search)`` -> (passages, hit)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise SearchError(f"cannot open the search cache {self.path}: {e}; give a writable path "
                              "or cache=None") from e
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._closed = False

    def _get(self, key: tuple[str, str, int]) -> list[Passage] | None:
        with self._lock:
            row = self._db.execute("SELECT passages FROM results WHERE backend=? AND query=? AND k=?",
                                   key).fetchone()
        return None if row is None else [Passage.from_dict(d) for d in json.loads(row[0])]

    def _put(self, key: tuple[str, str, int], passages: list[Passage]) -> None:
        blob = json.dumps([p.to_dict() for p in passages], ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                             (*key, blob, time.time()))

    async def get(self, backend: str, query: str, k: int) -> list[Passage] | None:
        return await asyncio.to_thread(self._get, (backend, query, k))

    async def put(self, backend: str, query: str, k: int, passages: list[Passage]) -> None:
        await asyncio.to_thread(self._put, (backend, query, k), passages)

    async def get_or_search(self, backend: str, query: str, k: int,
                            search: Callable[[], Awaitable[list[Passage]]]) -> tuple[list[Passage], bool]:
        """Cached passages and ``True``, or ``search()``'s passages (now cached) and ``False``."""
        key = (backend, query, k)
        lock = self._inflight.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = await self.get(*key)
                if cached is not None:
                    return cached, True
                passages = await search()
                await self.put(*key, passages)
                return passages, False
        finally:
            if not lock.locked() and self._inflight.get(key) is lock:
                del self._inflight[key]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM results").fetchone()[0]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with self._lock:
                self._db.close()
