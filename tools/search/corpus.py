"""Reading the user's documents and cutting them into passages.

Accepted inputs (``iter_documents``; a folder without any such file, and a JSON or JSONL file that is
not UTF-8, are ``DataError``s; undecodable bytes in a text file are replaced):

- a folder: every ``.txt`` / ``.md`` / ``.jsonl`` / ``.json`` file under it (sorted), each read as
  below; the title of a text file is its first Markdown heading or the file name
- a ``.txt`` / ``.md`` file: one document
- ``.jsonl``: one object per line with ``title`` and ``text`` (or ``paragraph_text``, ``contents``,
  ``sentences``; a list of sentences is joined); Search-R1's ``{"contents": "\\"Title\\"\\ntext"}`` too
- ``.json``: a list of such objects (MuSiQue paragraphs), a list of ``[title, sentences]`` pairs or a
  dict ``title -> sentences | text`` (the HotpotQA corpus shape)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import DataError

__all__ = ["CORPUS_SUFFIXES", "TEXT_SUFFIXES", "Document", "chunk_text", "iter_documents"]

TEXT_SUFFIXES = (".txt", ".md")
_TEXT_KEYS = ("text", "paragraph_text", "contents", "sentences", "body", "content")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    source: str

    @property
    def digest(self) -> str:
        """Content hash: adding the same document twice is a no-op."""
        return hashlib.sha256(f"{self.title}\0{self.text}".encode()).hexdigest()


CORPUS_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json")


def iter_documents(paths: Iterable[str | Path]) -> Iterator[Document]:
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
            if not files:
                raise DataError(f"{path} holds no corpus file ({', '.join(CORPUS_SUFFIXES)})")
            for f in files:
                yield from _file(f)
        elif not path.exists():
            raise DataError(f"corpus path {path} does not exist")
        else:
            yield from _file(path)


def _file(path: Path) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix not in CORPUS_SUFFIXES:
        raise DataError(f"{path}: unsupported corpus file; use a folder of .txt/.md files, .jsonl or .json")
    if suffix in TEXT_SUFFIXES:
        yield _text_file(path)  # undecodable bytes become U+FFFD: plain text stays searchable
    elif suffix == ".jsonl":
        yield from _jsonl(path)
    else:
        try:
            yield from _json(path)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: {_not_utf8(e)}") from None


def _text_file(path: Path) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace")
    m = _HEADING.search(text)
    return Document(m.group(1) if m else path.stem, text, str(path))


def _jsonl(path: Path) -> Iterator[Document]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: {_not_utf8(e)}") from None
            if line.strip():
                yield _from_obj(_loads(line, f"{path}:{n}"), f"{path.name}:{n}", where=f"{path}:{n}")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


def _not_utf8(e: UnicodeDecodeError) -> str:
    return (f"not UTF-8 text (byte {e.object[e.start:e.end]!a} at offset {e.start}); convert it, "
            "e.g. iconv -f latin1 -t utf-8")


def _json(path: Path) -> Iterator[Document]:
    data = _loads(path.read_text(encoding="utf-8"), str(path))
    if isinstance(data, dict):
        for title, body in data.items():
            yield Document(str(title), _join(body, f"{path}: {title!r}"), f"{path.name}:{title}")
    elif isinstance(data, list):
        for i, obj in enumerate(data):
            if isinstance(obj, (list, tuple)) and len(obj) == 2:
                yield Document(str(obj[0]), _join(obj[1], f"{path}[{i}]"), f"{path.name}:{i}")
            else:
                yield _from_obj(obj, f"{path.name}:{i}", where=f"{path}[{i}]")
    else:
        raise DataError(f"{path}: expected a list of {{title, text}} or a dict title -> text")


def _from_obj(obj: Any, default_source: str, where: str) -> Document:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object with 'title' and 'text', got {type(obj).__name__}")
    key = next((k for k in _TEXT_KEYS if k in obj), None)
    if key is None:
        raise DataError(f"{where}: no text field (one of {', '.join(_TEXT_KEYS)})")
    text = _join(obj[key], where)
    title = obj.get("title")
    if title is None and key == "contents":  # Search-R1: '"Title"\ntext'
        first, _, rest = text.partition("\n")
        title, text = first.strip().strip('"'), rest
    source = obj.get("url") or obj.get("source") or obj.get("id") or default_source
    return Document(str(title or ""), text, str(source))


def _join(body: Any, where: str) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, list) and all(isinstance(s, str) for s in body):
        return " ".join(s.strip() for s in body)
    raise DataError(f"{where}: text must be a string or a list of strings")


def _units(text: str, chunk_chars: int) -> list[str]:
    """Sentences (paragraph ends kept as units too); pieces longer than a chunk are split by words."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        for sent in _SENTENCE_END.split(" ".join(para.split())):
            while len(sent) > chunk_chars:
                cut = sent.rfind(" ", 0, chunk_chars)
                cut = cut if cut > chunk_chars // 2 else chunk_chars
                out.append(sent[:cut].strip())
                sent = sent[cut:].strip()
            if sent:
                out.append(sent)
    return out


def chunk_text(text: str, chunk_chars: int = 1000, overlap: int = 150) -> list[str]:
    """Passages of at most ``chunk_chars`` characters cut on sentence boundaries where possible; each
    passage after the first starts with up to ``overlap`` characters of whole sentences from the
    previous one."""
    if chunk_chars < 50 or not 0 <= overlap < chunk_chars // 2:
        raise DataError(f"need chunk_chars >= 50 and 0 <= overlap < chunk_chars/2 "
                        f"(got {chunk_chars}, {overlap})")
    chunks: list[str] = []
    cur: list[str] = []
    size = carried = 0  # characters in cur; how many of cur's units repeat the previous chunk
    for unit in _units(text, chunk_chars):
        if cur and size + 1 + len(unit) > chunk_chars:
            chunks.append(" ".join(cur))
            cur, size = _tail(cur, overlap, chunk_chars - len(unit) - 1)
            carried = len(cur)
        cur.append(unit)
        size += len(unit) + (1 if len(cur) > 1 else 0)
    if len(cur) > carried:
        chunks.append(" ".join(cur))
    return chunks


def _tail(units: list[str], overlap: int, room: int) -> tuple[list[str], int]:
    """The last whole sentences of ``units`` that fit in ``min(overlap, room)`` characters."""
    keep: list[str] = []
    size = 0
    for u in reversed(units):
        if size + len(u) + (1 if keep else 0) > min(overlap, room):
            break
        keep.insert(0, u)
        size += len(u) + (1 if len(keep) > 1 else 0)
    return keep, size
