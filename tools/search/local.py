"""Local BM25 search over the user's documents: one SQLite file with an FTS5 index.

Schema: ``docs`` (one row per document, unique content hash, so adding a document twice is a
no-op), ``passages`` (an FTS5 table of title, text and doc id), ``terms`` (document frequency of
every indexed term, refreshed after each build) and ``meta`` (passage count, average length, a
generation number that changes with every build so cached results of an older index are not reused).

Query path. Queries are tokenised in Python into words that are quoted and ORed, so no input can be
read as FTS5 syntax (``AND``, ``NEAR``, quotes, ``col:``, ``-``, ``*``). FTS5's ``ORDER BY rank``
scores every row that matches any term, which is slow for very common words (a 5-word query holding
"the" scores nearly every passage), and even scoring the few thousand rows of rare words costs
milliseconds. So candidates are chosen without per-row scoring: terms in more than
``common_df_ratio`` of the passages (and more than ``common_df_min``) are common. Every passage in
the (unranked, cheap) postings of a rare term is a candidate, weighted by the sum of the idf of
the query terms it holds: rare ones from their postings, common ones from a packed bitset per
common term, read once from its postings and kept in memory (LRU, ``common_cache_mb``). The
``max(k, rerank)`` heaviest are re-scored in Python with the full BM25 (same formula and column
weights as FTS5's ``bm25()``). When every term is common, candidates are the passages holding all
of them, else the rarest one. ``prune=False`` is plain FTS5 ``ORDER BY rank`` (the exact baseline
the benchmark compares against).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.errors import DataError, SearchError
from tools.search.base import Passage, SearchUnavailable
from tools.search.corpus import Document, chunk_text, iter_documents

__all__ = ["IndexStats", "LocalBackend", "LocalIndex", "build_index", "match_expression", "tokenize"]

log = logging.getLogger("splice.search")

SCHEMA_VERSION = "1"
TITLE_WEIGHT, TEXT_WEIGHT = 2.0, 1.0
K1, B = 1.2, 0.75
MAX_TERMS = 32
_WORD = re.compile(r"[^\W_]+")
# ASCII fast path of _WORD: every ASCII character but letters and digits separates words.
_ASCII_SEPARATORS = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE,
                                 title TEXT NOT NULL, source TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    title, text, doc_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS terms (term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO passages(passages, rank) VALUES ('rank', 'bm25({TITLE_WEIGHT}, {TEXT_WEIGHT}, 0)');
"""


def tokenize(text: str) -> list[str]:
    """Lower-cased words without diacritics: what FTS5's ``unicode61 remove_diacritics 2`` keeps."""
    text = text.lower()
    if text.isascii():
        return text.translate(_ASCII_SEPARATORS).split()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _WORD.findall(text)


def match_expression(terms: Iterable[str], op: str = "OR") -> str:
    """An FTS5 MATCH string that ORs (or ANDs) quoted words: never an FTS5 syntax error."""
    return f" {op} ".join('"' + t.replace('"', '""') + '"' for t in terms)


@dataclass
class IndexStats:
    docs_added: int = 0
    docs_skipped: int = 0
    passages_added: int = 0
    passages_total: int = 0
    seconds: float = 0.0

    def summary(self, out: str | Path) -> str:
        return (f"indexed {self.docs_added} docs ({self.docs_skipped} already present) into "
                f"{self.passages_added} passages in {self.seconds:.1f}s; {out} now holds "
                f"{self.passages_total} passages")


# -- building ---------------------------------------------------------------------------------------


def _open_for_write(out: Path) -> sqlite3.Connection:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(out, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise SearchError(f"cannot create the search index {out}: {e}; give a writable path") from e
    try:
        db.executescript("PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError as e:
        db.close()
        if "fts5" in str(e):
            raise SearchError("this Python's SQLite was built without FTS5; use a Python whose sqlite3 "
                              "has FTS5 (python.org and most distribution builds do)") from e
        raise SearchError(f"{out} is not a writable search index ({e}); give a new file name, or an "
                          "index built by `agent index build`") from e
    return db


def _add_document(db: sqlite3.Connection, doc: Document, chunk_chars: int, overlap: int) -> int | None:
    """Passages added for ``doc``; ``None`` when the same content is already indexed."""
    cur = db.execute("INSERT OR IGNORE INTO docs (digest, title, source) VALUES (?, ?, ?)",
                     (doc.digest, doc.title, doc.source))
    if cur.rowcount == 0:
        return None
    chunks = chunk_text(doc.text, chunk_chars, overlap) or [""]
    db.executemany("INSERT INTO passages (title, text, doc_id) VALUES (?, ?, ?)",
                   [(doc.title, c, cur.lastrowid) for c in chunks])
    return len(chunks)


def _refresh_stats(db: sqlite3.Connection) -> int:
    """Merge FTS segments, recompute document frequencies and corpus stats; the passage count."""
    db.execute("INSERT INTO passages(passages) VALUES ('optimize')")
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, passages, row)")
    db.execute("BEGIN")
    db.execute("DELETE FROM terms")
    db.execute("INSERT INTO terms SELECT term, doc FROM temp.vocab")
    n = db.execute("SELECT count(*) FROM passages").fetchone()[0]
    tokens = db.execute("SELECT coalesce(sum(cnt), 0) FROM temp.vocab").fetchone()[0]
    gen = int((db.execute("SELECT value FROM meta WHERE key='generation'").fetchone() or ["0"])[0]) + 1
    meta = {"schema": SCHEMA_VERSION, "passages": n, "avgdl": tokens / max(n, 1), "generation": gen}
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
    db.execute("COMMIT")
    return n


def build_index(paths: Iterable[str | Path], out: str | Path, *, chunk_chars: int = 1000,
                overlap: int = 150, progress: bool = True, batch: int = 2000) -> IndexStats:
    """Index the documents under ``paths`` into the SQLite file ``out`` (created, or added to:
    documents already there are skipped by content hash). Returns counts and time taken.
    Raises ``DataError`` when ``paths`` hold no document at all; a new index file that failed to
    build is removed."""
    out = Path(out).expanduser()
    paths = list(paths)
    log.info("indexing %s into %s", ", ".join(map(str, paths)), out)
    created = not out.exists()
    try:
        return _build(paths, out, chunk_chars, overlap, progress, batch)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # never created (bad path), or not ours to remove
                out.unlink()
        raise


def _build(paths: list[str | Path], out: Path, chunk_chars: int, overlap: int, progress: bool,
           batch: int) -> IndexStats:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    stats = IndexStats()
    db = _open_for_write(out)
    columns = (SpinnerColumn(), TextColumn("indexing {task.fields[docs]} docs, "
               "{task.fields[passages]} passages"), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("index", total=None, docs=0, passages=0)
            db.execute("BEGIN")
            for i, doc in enumerate(iter_documents(paths), 1):
                added = _add_document(db, doc, chunk_chars, overlap)
                stats.docs_added += added is not None
                stats.docs_skipped += added is None
                stats.passages_added += added or 0
                if i % batch == 0:
                    db.execute("COMMIT")
                    db.execute("BEGIN")
                    bar.update(task, docs=i, passages=stats.passages_added)
            db.execute("COMMIT")
            if stats.docs_added + stats.docs_skipped == 0:
                raise DataError(f"no documents found in {', '.join(map(str, paths))}; give .txt/.md files, "
                                ".jsonl or .json corpora, or folders holding them")
            bar.update(task, docs=stats.docs_added + stats.docs_skipped, passages=stats.passages_added)
            stats.passages_total = _refresh_stats(db)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
    stats.seconds = time.perf_counter() - start
    return stats


# -- searching --------------------------------------------------------------------------------------


def _is_locked(e: sqlite3.DatabaseError) -> bool:
    return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)


def _locked_message(path: Path) -> str:
    return f"the search index {path.name} is locked by another process (an index build writing to it?)"


class LocalIndex:
    """A read-only, thread-safe handle on an index file. ``search`` is synchronous (one or two
    milliseconds at 100k passages); ``LocalBackend`` runs it in a worker thread."""

    def __init__(self, path: str | Path, *, prune: bool = True, common_df_ratio: float = 0.02,
                 common_df_min: int = 1000, rerank: int = 30, busy_timeout_s: float = 5.0,
                 common_cache_mb: float = 64.0):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise SearchError(f"search index {self.path} does not exist; build it with "
                              f"`agent index build DOCS... -o {self.path}`")
        self.prune, self.common_df_ratio, self.common_df_min, self.rerank = (
            prune, common_df_ratio, common_df_min, rerank)
        self._db = sqlite3.connect(self.path.as_uri() + "?mode=ro", uri=True, check_same_thread=False,
                                   timeout=busy_timeout_s)
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA mmap_size=1073741824")
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            self._max_rowid = self._db.execute("SELECT coalesce(max(rowid), 0) FROM passages").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self._db.close()
            if _is_locked(e):
                raise SearchError(f"{_locked_message(self.path)}; try again when it is done") from e
            raise SearchError(f"{self.path} is not a splice search index ({e}); rebuild it with "
                              "`agent index build`") from e
        if meta.get("schema") != SCHEMA_VERSION:
            self._db.close()
            raise SearchError(f"{self.path} has index schema {meta.get('schema')!r}, this splice reads "
                              f"{SCHEMA_VERSION!r}; rebuild it with `agent index build`")
        self.n_passages = int(meta["passages"])
        self.avgdl = float(meta["avgdl"]) or 1.0
        self.generation = int(meta["generation"])
        self._bits: dict[str, np.ndarray] = {}
        self._bits_budget = common_cache_mb * 2**20

    def search(self, query: str, k: int) -> list[Passage]:
        """Up to ``k`` passages, best first. A locked or damaged index file raises
        ``SearchUnavailable`` (the tool shows it to the model), never a raw ``sqlite3`` error."""
        try:
            return self._search(query, k)
        except sqlite3.DatabaseError as e:
            if _is_locked(e):
                raise SearchUnavailable(f"{_locked_message(self.path)}; search again later") from e
            raise SearchUnavailable(f"the search index {self.path.name} is damaged ({e}); it needs a "
                                    "rebuild with `agent index build`") from e

    def _search(self, query: str, k: int) -> list[Passage]:
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or k <= 0:
            return []
        with self._lock:
            df = self._doc_freqs(terms)
            terms = sorted((t for t in terms if df.get(t)), key=df.__getitem__)[:MAX_TERMS]
            if not terms:
                return []
            if not self.prune:
                return [Passage(*r) for r in self._query(match_expression(terms), k, ranked=True)]
            rows = self._candidates(terms, df, k)
        return [Passage(*r) for r in self._rescore(rows, terms, df)[:k]]

    def _doc_freqs(self, terms: list[str]) -> dict[str, int]:
        marks = ",".join("?" * len(terms))
        return dict(self._db.execute(f"SELECT term, df FROM terms WHERE term IN ({marks})", terms))

    def _idf(self, df: int) -> float:
        return max(math.log((self.n_passages - df + 0.5) / (df + 0.5)), 1e-6)

    def _candidates(self, terms: list[str], df: dict[str, int], k: int) -> list[tuple[str, str, str]]:
        """Rows ``(title, text, source)`` to rescore: of the passages holding a rare term, the
        ``max(k, rerank)`` with the highest sum of idf over the query terms they hold (rare terms
        from their postings, common ones from in-memory bitsets), or, when every term is common,
        passages holding all of them, else the rarest one."""
        cutoff = max(self.common_df_min, self.common_df_ratio * self.n_passages)
        rare = [t for t in terms if df[t] <= cutoff]
        if not rare:
            rowids = self._rowids(match_expression(terms, "AND"), self.rerank * 10)
            if len(rowids) < k:
                rowids = np.concatenate([rowids, self._rowids(match_expression(terms[:1]), self.rerank * 10)])
            return self._fetch(np.unique(rowids).tolist())
        postings = [self._rowids(match_expression([t]), df[t]) for t in rare]
        ids, where = np.unique(np.concatenate(postings), return_inverse=True)
        weight = np.bincount(where, np.repeat([self._idf(df[t]) for t in rare], [len(p) for p in postings]))
        for t in terms[len(rare):]:
            weight += self._idf(df[t]) * self._holds(t, ids)
        best = np.lexsort((ids, -weight))[: max(k, self.rerank)]
        return self._fetch(ids[best].tolist())

    def _holds(self, term: str, ids: np.ndarray) -> np.ndarray:
        """1 where passage ``ids`` hold the common ``term``, else 0 (a packed bitset per term,
        read once from its postings and kept up to ``common_cache_mb``)."""
        bits = self._bits.pop(term, None)
        if bits is None:
            rows = self._rowids(match_expression([term]), self.n_passages)
            bits = np.zeros(max(self._max_rowid, rows.max(initial=0)) // 8 + 1, dtype=np.uint8)
            np.bitwise_or.at(bits, rows >> 3, (1 << (rows & 7)).astype(np.uint8))
            while self._bits and (len(self._bits) + 1) * bits.nbytes > self._bits_budget:
                del self._bits[next(iter(self._bits))]  # least recently used first
        self._bits[term] = bits
        byte = np.minimum(ids >> 3, len(bits) - 1)  # rows added since this handle opened: clipped
        return (bits[byte] >> (ids & 7).astype(np.uint8)) & 1

    def _rowids(self, match: str, limit: int) -> np.ndarray:
        """Rowids of up to ``limit`` passages matching, unranked (joined in SQLite and parsed by
        numpy: half the time of a Python loop over the rows)."""
        sql = ("SELECT group_concat(rowid, ' ') FROM (SELECT rowid FROM passages WHERE passages MATCH ? "
               "LIMIT ?)")
        joined = self._db.execute(sql, (match, limit)).fetchone()[0] or ""
        return np.fromstring(joined, dtype=np.int64, sep=" ")

    def _fetch(self, rowids: list[int]) -> list[tuple[str, str, str]]:
        sql = (f"SELECT c.c0, c.c1, d.source FROM passages_content AS c JOIN docs AS d ON d.id = c.c2 "
               f"WHERE c.id IN ({','.join('?' * len(rowids))})")
        return self._db.execute(sql, rowids).fetchall()

    def _query(self, match: str, limit: int, ranked: bool) -> list[tuple[str, str, str]]:
        order = "ORDER BY rank" if ranked else ""
        sql = (f"SELECT p.title, p.text, d.source FROM (SELECT rowid AS r, title, text, doc_id, rank "
               f"FROM passages WHERE passages MATCH ? {order} LIMIT ?) AS p "
               f"JOIN docs AS d ON d.id = p.doc_id ORDER BY p.rank")
        return self._db.execute(sql, (match, limit)).fetchall()

    def _rescore(self, rows: list[tuple[str, str, str]], terms: list[str],
                 df: dict[str, int]) -> list[tuple[str, str, str]]:
        """``rows`` best first by the full BM25 of FTS5's ``bm25()`` (same idf, k1, b, weights)."""
        idf = {t: self._idf(df[t]) for t in terms}
        scored = []
        for i, (title, text, source) in enumerate(rows):
            title_toks, text_toks = tokenize(title), tokenize(text)
            norm = K1 * (1 - B + B * (len(title_toks) + len(text_toks)) / self.avgdl)
            score = 0.0
            for t in terms:
                tf = TITLE_WEIGHT * title_toks.count(t) + TEXT_WEIGHT * text_toks.count(t)
                score += idf[t] * tf * (K1 + 1) / (tf + norm)
            scored.append((-score, i, (title, text, source)))
        scored.sort()
        return [r for _, _, r in scored]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LocalBackend:
    """``SearchBackend`` over a ``LocalIndex``; searches run in a worker thread."""

    name = "local"

    def __init__(self, index: str | Path, **options: object):
        self.index = LocalIndex(index, **options)  # type: ignore[arg-type]
        self.cache_key = f"local:{self.index.path}@{self.index.generation}"
        self._closed = False

    async def search(self, query: str, k: int) -> list[Passage]:
        return await asyncio.to_thread(self.index.search, query, k)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.index.close()
