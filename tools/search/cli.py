"""``agent index build PATH... -o INDEX``: parse options, call ``build_index``, print one line."""

from __future__ import annotations

import argparse

from tools.cli import HelpFormatter
from tools.search.local import build_index

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser("index", help="build and manage local search indexes",
                                   formatter_class=HelpFormatter)
    sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="index documents (a folder of .txt/.md, .jsonl or .json) into a "
                           "SQLite BM25 index; adding to an existing index skips documents already in it",
                           formatter_class=HelpFormatter)
    build.add_argument("paths", nargs="+", metavar="PATH", help="folders or corpus files")
    build.add_argument("-o", "--out", required=True, help="index file to create or add to")
    build.add_argument("--chunk-chars", type=int, default=1000, help="passage size in characters")
    build.add_argument("--overlap", type=int, default=150, help="characters repeated between passages")
    build.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (default: a progress bar on stderr)")
    build.set_defaults(func=_cmd_build)


def _cmd_build(ns: argparse.Namespace) -> int:
    stats = build_index(ns.paths, ns.out, chunk_chars=ns.chunk_chars, overlap=ns.overlap,
                        progress=ns.progress)
    print(stats.summary(ns.out))
    return 0
