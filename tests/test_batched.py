"""BatchedTransformersBackend: token-for-token parity with the single-sequence backend while episodes
join, leave for tool calls and rejoin mid-batch; a slow tool does not hold up other episodes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agent.backends._static_cache import _DecodeGraphs
from agent.backends.base import SamplingParams
from agent.backends.batched import BatchedTransformersBackend
from agent.backends.transformers import TransformersBackend
from agent.errors import ModelError
from tools.base import FunctionTool

EOS = 127
TOK = SimpleNamespace(eos_token_id=EOS)


def _tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   initializer_range=0.2, eos_token_id=EOS, bos_token_id=1)
    return transformers.LlamaForCausalLM(cfg).eval()


def _tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                  initializer_range=0.2, eos_token_id=EOS, bos_token_id=1)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    return _tiny_llama()


# Each episode: segments of (ids to append, tokens to take before closing the stream, max_tokens,
# seconds the "tool" takes before the next segment). Taking fewer than max_tokens closes the stream
# early, as the runtime does on a tool call; the scheduler has usually sampled past that point.
SCRIPTS = [
    [(list(range(2, 40)), 6, 20, 0.02), ([5, 6, 7, 8, 9], 8, 8, 0.0), ([11] * 3, 5, 30, 0.0)],
    [([3, 4], 10, 10, 0.05), (list(range(60, 80)), 4, 12, 0.01), ([9, 9], 6, 6, 0.0)],
    [(list(range(10, 25)), 3, 3, 0.0), ([42], 12, 40, 0.03), ([7] * 11, 7, 7, 0.0)],
    [(list(range(30, 100)), 9, 9, 0.01), ([1, 2, 3], 5, 25, 0.0)],
    [([8] * 5, 15, 15, 0.0), ([12, 13], 2, 10, 0.02), ([14] * 20, 6, 6, 0.0)],
]


async def _drive(backend, script, seed: int, delay: float = 0.0, **sampling) -> tuple[list[int], list[int]]:
    await asyncio.sleep(delay)
    seq = backend.new_sequence(seed)
    got: list[int] = []
    for append, take, max_tokens, pause in script:
        params = SamplingParams(max_tokens=max_tokens, seed=seed, **sampling)
        n = 0
        async with contextlib.aclosing(backend.stream(seq, list(append), params)) as toks:
            async for t in toks:
                got.append(t)
                n += 1
                if n >= take:
                    break
        await asyncio.sleep(pause)
    ids = list(seq.ids)
    await backend.release(seq)
    return ids, got


async def _single(model, **sampling) -> list[tuple[list[int], list[int]]]:
    single = TransformersBackend(model=model, tokenizer=TOK)
    return [await _drive(single, s, seed=i, **sampling) for i, s in enumerate(SCRIPTS)]


async def _batched(model, **kw) -> list[tuple[list[int], list[int]]]:
    sampling = kw.pop("sampling", {})
    async with BatchedTransformersBackend(model=model, tokenizer=TOK, **kw) as b:
        runs = [_drive(b, s, seed=i, delay=0.01 * i, **sampling) for i, s in enumerate(SCRIPTS)]
        return list(await asyncio.gather(*runs))


@pytest.mark.parametrize("max_batch", [2, 8])
async def test_greedy_matches_single_sequence_with_join_and_leave(llama, max_batch):
    expected = await _single(llama)
    got = await _batched(llama, max_batch=max_batch, max_len=256, prefill_chunk=16)
    assert got == expected
    assert sum(len(g) for _, g in got) > 80  # few early EOS: the comparison covers real decoding


async def test_sampled_episodes_do_not_depend_on_the_batch(llama):
    sampling = {"temperature": 0.9, "top_k": 20, "top_p": 0.95}
    alone = await _batched(llama, max_batch=1, max_len=256, sampling=sampling)
    shared = await _batched(llama, max_batch=5, max_len=256, sampling=sampling)
    assert shared == alone
    assert shared != await _single(llama)  # really sampled, not greedy


async def test_lean_forward_is_used_for_llama(llama):
    async with BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=2, max_len=64) as b:
        assert b.lean
        await _drive(b, SCRIPTS[1], seed=0)
        assert b.decode_steps > 0


class _EagerGraphs(_DecodeGraphs):
    """The CUDA-graph decode path (padded batch buckets, bucketed key length, static input buffers)
    with the capture replaced by an eager replay, so its bookkeeping is checked on CPU."""

    MIN_KV = 16

    def _capture(self, b, kv_len):
        static = (torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
                  torch.full((b,), self.r.max_len, dtype=torch.long))
        out = self.r._decode_core(*static, b, kv_len)
        self.captured.append((b, kv_len))
        return (lambda: out.copy_(self.r._decode_core(*static, b, kv_len))), static, out


async def test_cuda_graph_bookkeeping_matches_single_on_cpu(llama):
    expected = await _single(llama)
    async with BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=5, max_len=256) as b:
        b.runner.graphs = graphs = _EagerGraphs(b.runner)
        graphs.captured = []
        got = await asyncio.gather(*[_drive(b, s, seed=i, delay=0.01 * i) for i, s in enumerate(SCRIPTS)])
    assert list(got) == expected
    assert {k[0] for k in graphs.captured} >= {4, 5} and len({k[1] for k in graphs.captured}) >= 2


async def test_hf_fallback_for_other_architectures_matches_single():
    gpt2 = _tiny_gpt2()
    expected = await _single(gpt2)
    async with BatchedTransformersBackend(model=gpt2, tokenizer=TOK, max_batch=3, max_len=256) as b:
        assert not b.lean
        got = await asyncio.gather(*[_drive(b, s, seed=i, delay=0.01 * i) for i, s in enumerate(SCRIPTS)])
    assert list(got) == expected


async def test_slow_tool_in_one_episode_does_not_delay_the_others(llama):
    sleep_s = 1.5

    async def sleeper(query: str) -> str:
        """Sleeps, then answers."""
        await asyncio.sleep(sleep_s)
        return "done"

    tool = FunctionTool(sleeper)
    async with BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=4, max_len=256) as b:
        t0 = time.perf_counter()

        async def with_tool() -> float:
            seq = b.new_sequence(0)
            async with contextlib.aclosing(b.stream(seq, [2, 3, 4], SamplingParams(max_tokens=50))) as it:
                async for _ in it:
                    break  # the "tool call": leave the batch
            out = await tool.call("x")
            t_tool = time.perf_counter() - t0
            async with contextlib.aclosing(b.stream(seq, [5, len(out.text)], SamplingParams(max_tokens=3))) as it:
                assert len([t async for t in it]) == 3
            await b.release(seq)
            return t_tool

        async def without_tool() -> float:
            seq = b.new_sequence(1)
            async with contextlib.aclosing(b.stream(seq, [6, 7, 8], SamplingParams(max_tokens=60))) as it:
                n = len([t async for t in it if t != EOS])
            await b.release(seq)
            assert n >= 20
            return time.perf_counter() - t0

        t_tool, t_plain = await asyncio.gather(with_tool(), without_tool())
    assert t_tool >= sleep_s
    assert t_plain < sleep_s / 2, f"plain episode took {t_plain:.2f}s, the tool slept {sleep_s}s"


async def test_more_episodes_than_slots_wait_for_a_free_slot(llama):
    async with BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=1, max_len=128) as b:
        got = await asyncio.gather(*[_drive(b, SCRIPTS[i], seed=i) for i in (1, 2)])
    single = TransformersBackend(model=llama, tokenizer=TOK)
    assert list(got) == [await _drive(single, SCRIPTS[i], seed=i) for i in (1, 2)]


async def test_stream_stops_at_the_slot_size(llama):
    async with BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=1, max_len=20) as b:
        seq = b.new_sequence(0)
        toks = [t async for t in b.stream(seq, list(range(2, 12)), SamplingParams(max_tokens=100))]
        assert len(seq.ids) <= 20
        assert len(toks) == 10 or toks[-1] == EOS
        assert [t async for t in b.stream(seq, [3] * 10, SamplingParams(max_tokens=5))] == []


async def test_closed_backend_raises(llama):
    b = BatchedTransformersBackend(model=llama, tokenizer=TOK, max_batch=1, max_len=32)
    async with b:
        seq = b.new_sequence(0)
        assert len([t async for t in b.stream(seq, [2, 3], SamplingParams(max_tokens=2))]) == 2
        task = b._sched.task
    assert task.done()
    with pytest.raises(ModelError):
        async for _ in b.stream(seq, [4], SamplingParams(max_tokens=2)):
            pass


async def test_backends_pass_kv_caches_through_the_current_api(llama):
    """No ``past_key_values`` FutureWarning (the legacy keyword) from either backend's forward."""
    import warnings

    gpt2 = _tiny_gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        single = await _single(llama)
        async with BatchedTransformersBackend(model=gpt2, tokenizer=TOK, max_batch=2, max_len=256) as b:
            assert not b.lean  # the HF-forward fallback, one DynamicCache per slot
            got = await asyncio.gather(*[_drive(b, s, seed=i) for i, s in enumerate(SCRIPTS[:2])])
    assert all(len(ids) > len(SCRIPTS[0][0][0]) for ids, _ in single) and all(toks for _, toks in got)


@pytest.mark.parametrize("kind", ["single", "batched"])
async def test_every_forward_runs_on_the_backends_one_model_thread(kind):
    """torch keeps a thread team per calling thread: forwards that hop between asyncio's worker
    threads (``asyncio.to_thread``) ran the 8-sequence decode at 0.75x on 2 cores. Every forward of
    a backend, over many streams and episodes, must run on its one model thread."""
    import threading

    model = _tiny_llama()
    threads: set[threading.Thread] = set()
    hook = model.lm_head.register_forward_hook(lambda *_: threads.add(threading.current_thread()))
    try:
        if kind == "single":
            await _single(model)
        else:
            await _batched(model, max_batch=4)
    finally:
        hook.remove()
    assert len(threads) == 1, sorted(t.name for t in threads)
    (thread,) = threads
    assert thread.name.startswith("splice-torch"), thread.name
