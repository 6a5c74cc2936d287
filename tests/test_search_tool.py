"""The search tool: registry factory, result format, the on-disk cache (hit, miss, concurrency,
persistence), errors as result text, configuration errors, and the ``agent index build`` CLI."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from agent.errors import ConfigError
from tools.registry import get_tool
from tools.search import (
    Passage,
    SearchCache,
    SearchConfig,
    SearchTool,
    SearchUnavailable,
    build_index,
    format_results,
)
from tools.search.cli import add_parser


class CountingBackend:
    """A real ``SearchBackend`` over a fixed list, counting the searches it runs."""

    name = "fixed"
    cache_key = "fixed:v1"

    def __init__(self, passages: list[Passage], delay_s: float = 0.0, fail: str | None = None):
        self.passages, self.delay_s, self.fail = passages, delay_s, fail
        self.searches = 0
        self.closed = False

    async def search(self, query: str, k: int) -> list[Passage]:
        self.searches += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise SearchUnavailable(self.fail)
        return self.passages[:k]

    async def aclose(self) -> None:
        self.closed = True


PASSAGES = [Passage("Eiffel Tower", "Completed in 1889 in Paris. " * 10, "https://en.wikipedia.org/wiki/Eiffel"),
            Passage("Louvre", "A museum.", ""), Passage("Seine", "A river.", "seine.txt")]


@pytest.fixture
def index_file(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "eiffel.md").write_text("# Eiffel Tower\n\nThe tower was completed in 1889.")
    (tmp_path / "docs" / "moon.txt").write_text("Apollo 11 landed on the Moon in 1969.")
    out = tmp_path / "index.db"
    build_index([tmp_path / "docs"], out, progress=False)
    return out


async def test_registry_factory_builds_a_working_tool(index_file):
    tool = get_tool("search", backend="local", index=str(index_file), top_k=1)
    assert isinstance(tool, SearchTool) and tool.name == "search" and tool.arg_name == "query"
    assert tool.description and tool.examples and tool.timeout_s > tool.config.timeout_s
    out = await tool.call("When was the Eiffel Tower completed?")
    await tool.aclose()
    assert not out.error and out.text.startswith("[1] Eiffel Tower (") and "1889" in out.text
    assert out.meta == {"backend": "local", "cache_hit": False, "n_results": 1}


def test_format_results_layout():
    text = format_results("q", PASSAGES, max_chars=60)
    blocks = text.split("\n\n")
    assert blocks[0].startswith("[1] Eiffel Tower (https://en.wikipedia.org/wiki/Eiffel)\nCompleted in 1889")
    assert blocks[0].endswith("...") and len(blocks[0].splitlines()[1]) <= 60
    assert blocks[1] == "[2] Louvre\nA museum."  # no source: no parentheses
    assert blocks[2] == "[3] Seine (seine.txt)\nA river."
    assert format_results("nothing here", [], 100) == "No results for 'nothing here'. Try other keywords."


async def test_cache_miss_then_hit_and_persistence(tmp_path):
    backend = CountingBackend(PASSAGES)
    cfg = SearchConfig(backend="web", cache=str(tmp_path / "cache.db"), top_k=2)
    async with SearchTool.from_backend(backend, cfg) as tool:
        first = await tool.call("eiffel tower")
        second = await tool.call("  eiffel   tower ")  # same query after whitespace normalising
        other = await tool.call("louvre")
    assert (first.meta["cache_hit"], second.meta["cache_hit"], other.meta["cache_hit"]) == (False, True, False)
    assert first.text == second.text and backend.searches == 2 and backend.closed
    again = CountingBackend([])  # a new process: results come from disk, backend untouched
    async with SearchTool.from_backend(again, cfg) as tool:
        third = await tool.call("eiffel tower")
    assert third.meta["cache_hit"] and third.text == first.text and again.searches == 0


async def test_cache_keys_include_backend_and_k(tmp_path):
    cache = SearchCache(tmp_path / "c.db")
    try:
        await cache.put("a", "q", 3, PASSAGES[:1])
        assert await cache.get("a", "q", 3) == PASSAGES[:1]
        assert await cache.get("b", "q", 3) is None and await cache.get("a", "q", 2) is None
    finally:
        await cache.aclose()


async def test_concurrent_identical_queries_search_once(tmp_path):
    backend = CountingBackend(PASSAGES, delay_s=0.05)
    cfg = SearchConfig(backend="web", cache=str(tmp_path / "cache.db"))
    async with SearchTool.from_backend(backend, cfg) as tool:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(tool.call(q)) for q in ["same"] * 8 + ["other"] * 4]
        assert tool.cache is not None and len(tool.cache) == 2
    outs = [t.result() for t in tasks]
    assert backend.searches == 2
    assert sum(o.meta["cache_hit"] for o in outs) == 10
    assert len({o.text for o in outs[:8]}) == 1


async def test_failures_are_text_and_never_cached(tmp_path):
    backend = CountingBackend(PASSAGES, fail="the retriever at http://x could not be reached")
    cfg = SearchConfig(backend="web", cache=str(tmp_path / "cache.db"))
    async with SearchTool.from_backend(backend, cfg) as tool:
        outs = [await tool.call("q") for _ in range(2)]
    assert all(o.error and o.text == "Search failed: the retriever at http://x could not be reached"
               for o in outs)
    assert backend.searches == 2


async def test_slow_backend_times_out_as_text():
    backend = CountingBackend(PASSAGES, delay_s=5)
    async with SearchTool.from_backend(backend, SearchConfig(backend="web", timeout_s=0.05)) as tool:
        out = await tool.call("q")
    assert out.error and "no answer within 0.05s" in out.text


async def test_empty_and_huge_queries(index_file):
    async with SearchTool(index=str(index_file)) as tool:
        empty = await tool.call(" \n\t ")
        huge = await tool.call("Apollo " + "moon " * 10_000)
    assert empty.error and "empty" in empty.text
    assert not huge.error and "Apollo 11" in huge.text


@pytest.mark.parametrize("options, message", [
    ({"backend": "bing"}, "unknown search backend"),
    ({"backend": "http"}, "needs url"),
    ({"backend": "web", "top_k": 0}, "top_k"),
    ({"backend": "web", "max_chars": 5}, "max_chars"),
    ({"backend": "web", "colour": "red"}, "unknown search option"),
])
def test_bad_configuration_raises(options, message):
    with pytest.raises(ConfigError, match=message):
        SearchTool(**options)


def test_engines_accept_a_comma_string():
    assert SearchConfig(backend="web", engines="brave,mojeek").engines == ["brave", "mojeek"]  # type: ignore[arg-type]


def test_cli_index_build(tmp_path, capsys, index_file):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    (tmp_path / "more.txt").write_text("New document about volcanoes.")
    ns = parser.parse_args(["index", "build", str(tmp_path / "docs"), str(tmp_path / "more.txt"),
                            "-o", str(index_file), "--no-progress", "--chunk-chars", "500"])
    assert ns.func(ns) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("indexed 1 docs (2 already present) into 1 passages in ")
    assert line.endswith("now holds 3 passages")
