"""The batched backend on the real SmolLM2-135M-Instruct: greedy tokens equal the single-sequence
backend's, directly and through the Agent runtime (run_many)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from agent import Agent
from agent.backends import SamplingParams, default_model_path
from agent.backends.batched import BatchedTransformersBackend
from agent.backends.transformers import TransformersBackend, load_hf
from agent.errors import MissingDependency

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Count from one to five.",
             "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def smol():
    try:
        path = default_model_path()
    except MissingDependency as e:
        pytest.skip(str(e))
    try:
        return load_hf(path, "cpu")
    except ValueError:  # transformers 5 cannot save_pretrained a GGUF-loaded model: load it directly
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        return model.eval(), tok


async def _episode(backend, prompt: list[int], result: list[int], delay: float) -> list[int]:
    """Generate 6 tokens, leave for a 'tool', rejoin with a spliced result, generate 8 more."""
    await asyncio.sleep(delay)
    seq = backend.new_sequence(0)
    for append, take in ((prompt, 6), (result, 8)):
        async with contextlib.aclosing(backend.stream(seq, append, SamplingParams(max_tokens=24))) as it:
            n = 0
            async for _ in it:
                n += 1
                if n == take:
                    break
        await asyncio.sleep(0.05)
    ids = list(seq.ids)
    await backend.release(seq)
    return ids


async def test_smollm2_batched_greedy_equals_single_sequence(smol):
    model, tok = smol
    single = TransformersBackend(model=model, tokenizer=tok)
    prompts = [single.encode(single.chat_prompt([{"role": "user", "content": q}]), special=True) for q in QUESTIONS]
    result = single.encode("\n<result_start>\n42\n<result_end>\n")
    expected = [await _episode(single, p, result, 0) for p in prompts]
    async with BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=3, max_len=512,
                                          prefill_chunk=32) as b:
        assert b.lean
        got = await asyncio.gather(*[_episode(b, p, result, 0.1 * i) for i, p in enumerate(prompts)])
    assert list(got) == expected


async def test_smollm2_agent_run_many_same_trajectories(smol):
    model, tok = smol
    kw = {"tools": [], "max_new_tokens": 12}
    async with Agent(model=TransformersBackend(model=model, tokenizer=tok), **kw) as agent:
        expected = [await agent.run(q, seed=i) for i, q in enumerate(QUESTIONS)]
    batched = BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=4, max_len=1024)
    async with Agent(model=batched, **kw) as agent:
        got = await agent.run_many(QUESTIONS)
    assert [t.token_ids for t in got] == [t.token_ids for t in expected]
    assert all(t.meta["prefilled"] > 0 for t in got)
