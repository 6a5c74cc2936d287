"""The llama.cpp backend with ``n_seq > 1``: concurrent episodes decode in one ``llama_decode`` per
step, each on its own KV sequence, on the real SmolLM2 GGUF.

llama.cpp logits depend on batch shape (ARCHITECTURE.md), so token-for-token equality with a
single-episode run is not promised; what is asserted is the teacher-forced tolerance of
``test_backends_real.assert_matches_cold`` for every sampled token of every batched episode, plus the
exact bookkeeping: which ids sit where in each sequence, what was prefilled, and that an episode
waiting on a slow tool leaves the batch to the others.
"""

import asyncio
import time

import numpy as np
import pytest
from test_backends_real import SPLICE, assert_matches_cold

from agent import Agent
from agent.backends import BackendConfig, SamplingParams, common_prefix, default_model_path
from agent.errors import ModelError
from tools import tool

pytestmark = pytest.mark.slow

QUESTIONS = ["Tell me about Paris.", "List five animals of Africa.", "Write a haiku about rivers.",
             "What is the capital of Japan?"]


@pytest.fixture(scope="module")
def gguf():
    return default_model_path()


@pytest.fixture
async def multi(gguf):
    from agent.backends.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(gguf, n_ctx=512, n_seq=4)
    b.seq_traces = {}
    yield b
    await b.aclose()


def prompt_ids(backend, question: str) -> list[int]:
    return backend.encode(backend.chat_prompt([{"role": "user", "content": question}]), special=True)


async def take(backend, seq, append: list[int], n: int) -> list[int]:
    return [t async for t in backend.stream(seq, append, SamplingParams(max_tokens=n))]


async def spliced_episode(backend, question: str, wait_s: float = 0.0) -> dict:
    """Generate, wait (a tool), splice, continue: what the runtime does with one tool call."""
    prompt, seq = prompt_ids(backend, question), backend.new_sequence()
    first = await take(backend, seq, prompt, 10)
    await asyncio.sleep(wait_s)
    splice = backend.encode(SPLICE)
    before = seq.n_prefilled
    cont = await take(backend, seq, splice, 16)
    return {"seq": seq, "prompt": prompt, "first": first, "splice": splice, "cont": cont,
            "splice_prefilled": seq.n_prefilled - before}


async def test_batched_episodes_match_cold_runs_teacher_forced(multi, gguf):
    eps = await asyncio.gather(*[spliced_episode(multi, q) for q in QUESTIONS])
    for e in eps:
        seq, trace = e["seq"], multi.seq_traces[id(e["seq"])]
        # exactly the ids of this episode, in order: prompt, sampled, spliced, sampled
        assert seq.ids == e["prompt"] + e["first"] + e["splice"] + e["cont"]
        assert seq.n_sampled == len(e["first"]) + len(e["cont"]) == len(trace)
        # the resume prefilled the splice and the last sampled token (never fed: max_tokens ended it)
        assert e["splice_prefilled"] == len(e["splice"]) + 1
        assert_matches_cold(gguf, e["prompt"], e["first"], trace[:len(e["first"])])
        assert_matches_cold(gguf, e["prompt"] + e["first"] + e["splice"], e["cont"], trace[len(e["first"]):])


async def test_one_decode_step_serves_every_running_episode(multi):
    seqs = [multi.new_sequence() for _ in QUESTIONS]
    outs = await asyncio.gather(*[take(multi, s, prompt_ids(multi, q), 24) for s, q in zip(seqs, QUESTIONS)])
    n_tokens = sum(map(len, outs))
    assert min(map(len, outs)) >= 5
    # batched: one step per prompt (prefills go one at a time) plus one per token of the longest
    # episode, never one step per token
    assert multi._sched.steps <= max(map(len, outs)) + len(QUESTIONS) < n_tokens


async def test_an_episode_waiting_on_a_slow_tool_does_not_delay_the_others(multi, gguf):
    t0 = time.perf_counter()
    slow = asyncio.create_task(spliced_episode(multi, QUESTIONS[0], wait_s=4.0))
    others = await asyncio.gather(*[spliced_episode(multi, q) for q in QUESTIONS[1:]])
    assert time.perf_counter() - t0 < 3.5  # finished while the slow episode still waits
    assert not slow.done()
    e = await slow
    # the slow episode rejoined on its own sequence: only its splice (and last token) was prefilled
    assert e["splice_prefilled"] == len(e["splice"]) + 1
    trace = multi.seq_traces[id(e["seq"])]
    assert_matches_cold(gguf, e["prompt"] + e["first"] + e["splice"], e["cont"], trace[len(e["first"]):])
    assert all(o["cont"] for o in others)


async def test_more_sequences_than_slots_evict_the_idle_one(gguf):
    from agent.backends.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(gguf, n_ctx=512, n_seq=2)
    b.seq_traces = {}
    try:
        seqs = [b.new_sequence() for _ in range(3)]
        prompts = [prompt_ids(b, q) for q in QUESTIONS[:3]]
        firsts = [await take(b, s, p, 8) for s, p in zip(seqs, prompts)]  # never released: the third evicts one
        splice = b.encode(SPLICE)
        cont = await take(b, seqs[0], splice, 12)  # seqs[0] was evicted: it re-prefills its whole context
        assert seqs[0].ids == prompts[0] + firsts[0] + splice + cont
        trace = b.seq_traces[id(seqs[0])]
        assert_matches_cold(gguf, prompts[0] + firsts[0] + splice, cont, trace[len(firsts[0]):])
    finally:
        await b.aclose()


async def test_a_released_slot_keeps_the_shared_prompt_prefix(multi):
    a = multi.new_sequence()
    await take(multi, a, prompt_ids(multi, QUESTIONS[0]), 4)
    await multi.release(a)
    b = multi.new_sequence()
    pb = prompt_ids(multi, QUESTIONS[1])
    await take(multi, b, pb, 4)
    shared = next(i for i, (x, y) in enumerate(zip(prompt_ids(multi, QUESTIONS[0]), pb)) if x != y)
    assert b.n_cached == shared and b.n_prefilled == len(pb) - shared


async def test_context_overflow_is_a_model_error_and_the_batch_goes_on(multi):
    long_seq, ok = multi.new_sequence(), multi.new_sequence()
    with pytest.raises(ModelError, match="exceeds n_ctx=512"):
        await take(multi, long_seq, [42] * 600, 4)
    assert len(await take(multi, ok, prompt_ids(multi, QUESTIONS[0]), 4)) == 4


def test_n_seq_out_of_range_is_a_clear_error(gguf):
    from agent.backends.llama_cpp import LlamaCppBackend

    with pytest.raises(ValueError, match="n_seq must be in"):
        LlamaCppBackend(gguf, n_seq=0)


async def agent_runs(gguf, n_seq: int) -> tuple[list, list[float]]:
    from agent.backends.llama_cpp import LlamaCppBackend

    others_done = asyncio.Event()

    @tool(name="add")
    async def slow_add(expr: str) -> str:
        """Adds numbers; 1+1 returns only once every other episode has finished (a slow tool)."""
        if expr == "1+1":  # an episode held up by this one would make this time out (an error result)
            await asyncio.wait_for(others_done.wait(), 60)
        return str(sum(int(x) for x in expr.split("+")))

    async with LlamaCppBackend(gguf, n_ctx=1024, n_seq=n_seq) as backend:
        agent = Agent(backend, tools=[slow_add], max_new_tokens=12, tool_timeout_s=90)
        t0, done = time.perf_counter(), [0.0] * 4

        async def one(i: int):
            t = await agent.run(f"What is {i + 1}+{i + 1}?", seed=i, prefix=f"<add_start>{i + 1}+{i + 1}<add_end>")
            done[i] = time.perf_counter() - t0
            if i and all(done[1:]):
                others_done.set()
            return t

        return await asyncio.gather(*[one(i) for i in range(4)]), done


async def test_agent_episodes_splice_the_same_tokens_batched_or_not(gguf):
    batched, done = await agent_runs(gguf, 4)
    single, _ = await agent_runs(gguf, 1)
    for b, s in zip(batched, single):
        assert [x.source for x in b.segments[:3]] == ["prompt", "forced", "result"]
        # the same prompt, forced call and spliced result ids, with mask 0; every sampled token mask 1
        assert [(x.source, x.token_ids) for x in b.segments[:3]] == [(x.source, x.token_ids) for x in s.segments[:3]]
        assert b.loss_mask() == [int(x.source == "model") for x in b.segments for _ in x.token_ids]
        assert b.n_generated > 0
    assert batched[0].tool_calls[0].result == "2"  # the slow tool returned only after the others finished
    assert max(done[1:]) < done[0]


async def test_episodes_arriving_together_share_the_prompt_prefix(multi, gguf):
    seqs, prompts = [multi.new_sequence() for _ in range(3)], [prompt_ids(multi, q) for q in QUESTIONS[:3]]
    outs = await asyncio.gather(*[take(multi, s, p, 12) for s, p in zip(seqs, prompts)])
    shared = common_prefix(prompts[0], prompts[1])
    assert shared > 10
    assert seqs[0].n_prefilled == len(prompts[0])  # the first pays for the system prompt once
    for s, p in zip(seqs[1:], prompts[1:]):
        assert s.n_cached == shared and s.n_prefilled == len(p) - shared
    for s, p, o in zip(seqs, prompts, outs):  # the shared cells are the right KV
        assert_matches_cold(gguf, p, o, multi.seq_traces[id(s)])


async def test_bad_token_ids_fail_their_episode_only(multi):
    good = multi.new_sequence()
    task = asyncio.create_task(take(multi, good, prompt_ids(multi, QUESTIONS[0]), 16))
    await asyncio.sleep(0.2)  # the good episode is in the batch
    bad = multi.new_sequence()
    with pytest.raises(ModelError, match="outside the vocabulary"):
        await take(multi, bad, [1, 10**7], 4)
    assert bad.ids == [] and len(await task) == 16


def test_runtime_config_n_seq_reaches_the_llama_cpp_backend():
    from agent import load_backend

    backend = load_backend("default", BackendConfig(backend="llama_cpp", n_seq=2, n_ctx=512))
    try:
        assert backend.n_seq == 2
    finally:
        asyncio.run(backend.aclose())


@pytest.mark.parametrize("n_seq", [1, 3])
async def test_each_sampled_token_carries_the_models_own_log_prob(gguf, n_seq):
    """``Sequence.logprobs``: one per sampled token, the log-softmax (temperature 1) of the very row
    the token was drawn from, on the one-sequence path and the batched one, across a splice."""
    from agent.backends.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(gguf, n_ctx=512, n_seq=n_seq)
    try:
        rows: list[np.ndarray] = []
        if n_seq == 1:
            b.logits_trace = rows
        else:
            b.seq_traces = {}
        seq = b.new_sequence(5)
        params = SamplingParams(max_tokens=6, temperature=0.8)
        toks = [t async for t in b.stream(seq, prompt_ids(b, "Name a fruit."), params)]
        toks += [t async for t in b.stream(seq, b.encode(SPLICE), params)]
        if n_seq > 1:
            rows = b.seq_traces[id(seq)]
        assert len(seq.logprobs) == len(toks) == len(rows) == 12
        for tok, row, lp in zip(toks, rows, seq.logprobs):
            want = row[tok] - row.max() - np.log(np.exp(row - row.max()).sum())
            assert lp == pytest.approx(float(want), abs=1e-4) and lp <= 0
    finally:
        await b.aclose()
