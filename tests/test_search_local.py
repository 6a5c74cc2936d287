"""Local search: corpus shapes, chunking, index build + incremental add, BM25 ranking on a generated
corpus with known facts, hostile queries. Real SQLite files in tmp_path."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3

import pytest

from agent.errors import DataError, SearchError
from tools.search import LocalBackend, LocalIndex, SearchTool, build_index
from tools.search.corpus import chunk_text, iter_documents
from tools.search.local import match_expression, tokenize

WORDS = ["river", "mountain", "city", "harbour", "castle", "bridge", "valley", "forest", "island", "market", "temple", "garden", "tower", "library", "museum", "station", "school", "field", "road", "lake"]


def synth_docs(n: int, seed: int = 0) -> list[dict]:
    """Documents of filler words, each with one unique fact: 'The <codename> was founded in <year>.'"""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        filler = " ".join(rng.choice(WORDS) for _ in range(80))
        fact = f"The codename{i:04d} settlement was founded in year{1000 + i}."
        docs.append({"title": f"Place {i}", "text": f"{filler}. {fact} {filler}."})
    return docs


@pytest.fixture
def corpus_index(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in synth_docs(200)))
    out = tmp_path / "index.db"
    stats = build_index([src], out, chunk_chars=400, overlap=80, progress=False)
    return out, stats


def test_fts5_is_available():
    sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(a)")


def test_known_fact_is_rank_one(corpus_index):
    out, stats = corpus_index
    assert stats.docs_added == 200 and stats.passages_total > 200  # docs were chunked
    index = LocalIndex(out)
    for i in (0, 57, 199):
        top = index.search(f"when was codename{i:04d} founded?", 3)
        assert f"codename{i:04d}" in top[0].text and top[0].title == f"Place {i}"
        assert top[0].source == f"corpus.jsonl:{i + 1}"
    assert f"year{1000 + 57}" in index.search(f"year{1000 + 57}", 1)[0].text


def test_pruned_search_matches_exact_on_facts(corpus_index):
    out, _ = corpus_index
    # Every filler word is in > 1% of passages: they only score; the codename selects.
    fast = LocalIndex(out, common_df_ratio=0.01, common_df_min=0)
    exact = LocalIndex(out, prune=False)
    for i in range(0, 200, 23):
        q = f"codename{i:04d} river castle bridge"
        assert fast.search(q, 1)[0].text == exact.search(q, 1)[0].text
    only_common = fast.search("river castle bridge", 3)  # no rare term at all: still answers
    assert len(only_common) == 3


def test_incremental_add_is_idempotent(tmp_path, corpus_index):
    out, _ = corpus_index
    again = build_index([tmp_path / "corpus.jsonl"], out, chunk_chars=400, overlap=80, progress=False)
    assert (again.docs_added, again.docs_skipped, again.passages_added) == (0, 200, 0)
    extra = tmp_path / "extra.md"
    extra.write_text("# Zanzibar notes\n\nThe quokkafish swims near Zanzibar.\n")
    more = build_index([extra], out, progress=False)
    assert (more.docs_added, more.passages_total) == (1, again.passages_total + 1)
    top = LocalIndex(out).search("quokkafish", 3)
    assert [p.title for p in top] == ["Zanzibar notes"]


def test_every_corpus_shape(tmp_path):
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "a.txt").write_text("Alpha plain text about aardvarks.")
    (tmp_path / "folder" / "sub" / "b.md").write_text("# Beta Heading\n\nBetamax tapes.")
    (tmp_path / "folder" / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / "hotpot.json").write_text(json.dumps({"Gamma": ["Gamma rays ", "are energetic."]}))
    (tmp_path / "musique.json").write_text(json.dumps([{"title": "Delta", "paragraph_text": "Delta wing."}]))
    (tmp_path / "pairs.json").write_text(json.dumps([["Epsilon", ["Epsilon is small."]]]))
    (tmp_path / "r1.jsonl").write_text(json.dumps({"id": "7", "contents": '"Zeta"\nZeta function.'}))
    docs = list(iter_documents([tmp_path / n for n in ("folder", "hotpot.json", "musique.json",
                                                       "pairs.json", "r1.jsonl")]))
    assert [d.title for d in docs] == ["a", "Beta Heading", "Gamma", "Delta", "Epsilon", "Zeta"]
    assert docs[2].text == "Gamma rays are energetic." and docs[5].source == "7"
    out = tmp_path / "i.db"
    build_index([tmp_path / "folder", tmp_path / "hotpot.json", tmp_path / "musique.json",
                 tmp_path / "pairs.json", tmp_path / "r1.jsonl"], out, progress=False)
    index = LocalIndex(out)
    for word, title in [("aardvarks", "a"), ("betamax", "Beta Heading"), ("energetic", "Gamma"),
                        ("wing", "Delta"), ("small", "Epsilon"), ("function", "Zeta")]:
        assert index.search(word, 1)[0].title == title


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"title": "x"}', "no text field"),
                                              ('{"text": 3}', "string or a list")])
def test_malformed_corpus_raises_data_error(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(DataError, match=message):
        build_index([bad], tmp_path / "i.db", progress=False)


def test_chunking_respects_size_sentences_and_overlap():
    text = " ".join(f"Sentence number {i} ends here." for i in range(60))
    chunks = chunk_text(text, chunk_chars=200, overlap=60)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 5
    assert all(c.endswith(".") for c in chunks)  # cut between sentences
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.split(". ")[0] + "." in prev  # the next chunk starts with the previous one's tail
    long_word_run = "x" * 450
    assert [len(c) for c in chunk_text(long_word_run, 200, 0)] == [200, 200, 50]
    assert chunk_text("", 200, 0) == []


HOSTILE = ['"', '""', "(", "a AND", "OR OR", "NEAR(a b", "title:", "col:x", "-x", "*", "a*",
           "^start", "{a b}", "'; DROP TABLE docs; --", "\x00\x01", "   ", "", "🙂🙃", "東京 タワー",
           "Ünïcödé façade", "x" * 20000, " ".join(["codename0001"] * 500), "a" * 3 + "-" * 100]


@pytest.mark.parametrize("query", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_queries_never_raise(corpus_index, query):
    index = LocalIndex(corpus_index[0])
    assert isinstance(index.search(query, 3), list)


async def test_hostile_queries_through_the_tool(corpus_index):
    async with SearchTool(index=str(corpus_index[0])) as tool:
        for q in HOSTILE:
            out = await tool.call(q)
            assert out.error == (not q.strip())  # only blank queries are errors
        assert (await tool.call("codename0042 (AND) NEAR")).text.startswith("[1] Place 42")


def test_match_expression_and_tokenize():
    assert tokenize("Fa\u00e7ade, CAFÉ_au-lait 42!") == ["facade", "cafe", "au", "lait", "42"]
    assert match_expression(["a", "or"]) == '"a" OR "or"'


def test_diacritics_match_both_ways(tmp_path):
    (tmp_path / "d.txt").write_text("The façade of the Café Müller.")
    build_index([tmp_path / "d.txt"], tmp_path / "i.db", progress=False)
    index = LocalIndex(tmp_path / "i.db")
    assert index.search("facade cafe muller", 1) and index.search("FAÇADE", 1)


def test_missing_or_bad_index_raises_at_construction(tmp_path):
    with pytest.raises(SearchError, match="agent index build"):
        SearchTool(index=str(tmp_path / "nope.db"))
    with pytest.raises(SearchError, match="needs an index"):
        SearchTool()
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(SearchError, match="not a splice search index"):
        LocalIndex(tmp_path / "junk.db")


async def test_backend_runs_in_thread_and_closes(corpus_index):
    backend = LocalBackend(corpus_index[0])
    assert backend.cache_key.startswith("local:") and backend.cache_key.endswith("@1")
    assert (await backend.search("codename0003", 1))[0].title == "Place 3"
    await backend.aclose()
    await backend.aclose()  # idempotent
