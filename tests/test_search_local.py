"""Local search: corpus shapes, chunking, index build + incremental add, BM25 ranking on a generated
corpus with known facts, hostile queries. Real SQLite files in tmp_path."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import time

import pytest

from agent.errors import DataError, SearchError
from tools.search import LocalBackend, LocalIndex, SearchConfig, SearchTool, build_index
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
def test_hostile_queries_find_the_right_passage_or_nothing(corpus_index, query):
    """No hostile text is read as FTS5 syntax: alone, only its real words count (the one holding
    codename0001 finds Place 1, the others hold no indexed word and find nothing); around another
    fact's codename, that fact's passage still ranks first."""
    index = LocalIndex(corpus_index[0])
    alone = index.search(query, 3)
    if "codename0001" in query:
        assert alone and alone[0].title == "Place 1" and "codename0001" in alone[0].text
        return
    assert alone == []
    for i in (42, 137):
        top = index.search(f"{query} codename{i:04d} {query[:200]}", 3)
        assert top[0].title == f"Place {i}" and f"year{1000 + i}" in top[0].text


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
        SearchTool(backend="local")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(SearchError, match="not a splice search index"):
        LocalIndex(tmp_path / "junk.db")


async def test_backend_runs_in_thread_and_closes(corpus_index):
    backend = LocalBackend(corpus_index[0])
    assert backend.cache_key.startswith("local:") and backend.cache_key.endswith("@1")
    assert (await backend.search("codename0003", 1))[0].title == "Place 3"
    await backend.aclose()
    await backend.aclose()  # idempotent


async def test_locked_index_is_an_error_result_not_an_exception(corpus_index):
    out, _ = corpus_index
    holder = sqlite3.connect(out, isolation_level=None)  # a second connection, as a build would be
    backend = LocalBackend(out, busy_timeout_s=0.2)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        async with SearchTool.from_backend(backend, SearchConfig(backend="local", index=str(out))) as tool:
            t0 = time.perf_counter()
            locked = await tool.call("codename0042")
            waited = time.perf_counter() - t0
            holder.execute("ROLLBACK")
            after = await tool.call("codename0042")
    finally:
        holder.close()
    assert locked.error and "is locked by another process" in locked.text, locked.text
    assert waited < 2.0  # the busy timeout asked for, not SQLite's default 5 s
    assert not after.error and after.text.startswith("[1] Place 42")  # the same tool recovers


def test_index_locked_while_opening_says_so(corpus_index):
    out, _ = corpus_index
    holder = sqlite3.connect(out, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SearchError, match="is locked by another process"):
            LocalIndex(out, busy_timeout_s=0.1)
    finally:
        holder.close()


async def test_index_damaged_after_opening_is_an_error_result(corpus_index):
    out, _ = corpus_index
    async with SearchTool(index=str(out)) as tool:
        assert not (await tool.call("codename0003")).error
        size = out.stat().st_size
        data = out.read_bytes()  # garbage over everything after the first two pages
        out.write_bytes(data[:8192] + random.Random(0).randbytes(size - 8192))
        damaged = await tool.call("codename0077")
    assert damaged.error and "is damaged" in damaged.text and "agent index build" in damaged.text


def test_index_of_garbage_bytes_is_a_search_error_at_construction(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(random.Random(1).randbytes(64 * 1024))
    with pytest.raises(SearchError, match="not a splice search index"):
        SearchTool(index=str(junk))


def test_folder_of_jsonl_corpora_is_indexed(tmp_path):
    (tmp_path / "corpus" / "part2").mkdir(parents=True)
    (tmp_path / "corpus" / "part1.jsonl").write_text(json.dumps({"title": "Okapi", "text": "Okapis live in forests."}))
    (tmp_path / "corpus" / "part2" / "b.jsonl").write_text(json.dumps({"title": "Quoll", "text": "Quolls hunt at night."}))
    stats = build_index([tmp_path / "corpus"], tmp_path / "i.db", progress=False)
    assert (stats.docs_added, stats.passages_total) == (2, 2)
    index = LocalIndex(tmp_path / "i.db")
    assert index.search("okapis", 1)[0].title == "Okapi" and index.search("quolls", 1)[0].title == "Quoll"


def test_nothing_to_index_fails_loudly_and_leaves_no_file(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match="holds no corpus file"):
        build_index([tmp_path / "empty"], tmp_path / "i.db", progress=False)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no documents found"):
        build_index([tmp_path / "blank.jsonl"], tmp_path / "i.db", progress=False)
    assert not (tmp_path / "i.db").exists()


def test_non_utf8_corpus_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"title": "a", "text": "fine"}\n{"title": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not UTF-8"):
        build_index([bad], tmp_path / "i.db", progress=False)
    (tmp_path / "bad.json").write_bytes(b'[{"title": "b", "text": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"bad.json: not UTF-8"):
        build_index([tmp_path / "bad.json"], tmp_path / "i.db", progress=False)


ANIMALS = ["otter", "heron", "badger", "falcon", "beaver", "lynx", "marten", "osprey", "weasel", "stoat",
           "puffin", "curlew", "plover", "bittern", "kestrel", "merlin", "shrew", "vole", "newt", "toad"]
COLOURS = ["red", "blue", "green", "amber", "grey", "white", "black", "brown", "golden", "silver"]


def colour_corpus() -> list[dict]:
    """20 passages per animal; of an animal's passages only one (at position 10 to 19, past the
    first ``rerank`` by rowid) names both of its two colours, so 'animal colour colour' has one
    answer that the colours, common words here, decide, and exact BM25 ranks it first."""
    rng = random.Random(3)
    docs = []
    for a, animal in enumerate(ANIMALS):
        pair = {COLOURS[a % 10], COLOURS[(a * 3 + 1) % 10]}
        for j in range(20):
            colours = list(pair) if j == 10 + a % 10 else [*rng.sample(sorted(pair), 1),
                                                           *rng.sample(sorted(set(COLOURS) - pair), 2)]
            text = (f"The {animal} was seen near the {rng.choice(WORDS)} in the morning. "
                    f"It is {' and '.join(colours)}, and it is {rng.choice(['small', 'shy', 'quick'])}. "
                    + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 15))))
            docs.append({"title": f"Field note {a * 20 + j}", "text": text})
    return docs


@pytest.mark.parametrize("options", [{"common_df_ratio": 0.1, "common_df_min": 0, "rerank": 5}, {}],
                         ids=["colours-common", "default"])
def test_fast_path_ranks_like_exact_bm25(tmp_path, options):
    """Candidate selection must find exact BM25's top passage even when the rare word alone (the
    animal) ties 20 passages and the common words (colours) decide: top-1 agrees with FTS5's
    ``ORDER BY rank`` for every animal, and that top-1 is the planted passage."""
    src = tmp_path / "notes.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in colour_corpus()))
    build_index([src], tmp_path / "i.db", progress=False)
    fast, exact = LocalIndex(tmp_path / "i.db", **options), LocalIndex(tmp_path / "i.db", prune=False)
    for a, animal in enumerate(ANIMALS):
        q = f"the {animal} is {COLOURS[a % 10]} and {COLOURS[(a * 3 + 1) % 10]}"
        want = exact.search(q, 1)[0]
        assert want.title == f"Field note {a * 20 + 10 + a % 10}"  # unambiguous answer
        assert fast.search(q, 3)[0] == want, q


def test_common_term_bitsets_stay_within_their_memory_budget(tmp_path):
    """With no room for bitsets, each common term's is read again when needed and only the last
    one is kept; ranking is unchanged."""
    src = tmp_path / "notes.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in colour_corpus()))
    build_index([src], tmp_path / "i.db", progress=False)
    roomy = LocalIndex(tmp_path / "i.db", common_df_ratio=0.1, common_df_min=0, rerank=5)
    tight = LocalIndex(tmp_path / "i.db", common_df_ratio=0.1, common_df_min=0, rerank=5, common_cache_mb=0)
    for a, animal in enumerate(ANIMALS[:5]):
        q = f"the {animal} is {COLOURS[a % 10]} and {COLOURS[(a * 3 + 1) % 10]}"
        assert tight.search(q, 3) == roomy.search(q, 3)
    assert len(tight._bits) == 1 and len(roomy._bits) > 5
