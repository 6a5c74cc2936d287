"""``SamplingParams.banned``: ids that are never sampled, greedy or not, on the shared sampler (every
local backend), on the real llama.cpp model, and sent to servers as ``logit_bias``."""

from __future__ import annotations

import numpy as np
import pytest
from chartok import Chars

from agent.backends import default_model_path
from agent.backends.base import SamplingParams
from agent.backends.sampling import make_rng, sample_token


def test_greedy_skips_a_banned_argmax_and_leaves_the_logits_as_they_were():
    logits = np.array([0.0, 5.0, 4.0, 1.0], dtype=np.float32)
    assert sample_token(logits, SamplingParams(), make_rng(0)) == 1
    assert sample_token(logits, SamplingParams(banned=frozenset({1})), make_rng(0)) == 2
    assert logits[1] == 5.0  # a backend's own buffer is not written


def test_sampling_never_draws_a_banned_id():
    logits = np.array([3.0, 3.0, 3.0, -1.0], dtype=np.float32)
    params = SamplingParams(temperature=1.0, banned=frozenset({0, 2}))
    rng = make_rng(1)
    draws = {sample_token(logits, params, rng) for _ in range(300)}
    assert draws == {1, 3}


def test_openai_requests_carry_the_ban_as_logit_bias():
    from agent.backends.openai import OpenAIBackend

    b = OpenAIBackend("http://mock/v1", "m", tokenizer=Chars())
    body = b.request_body(b.new_sequence(), SamplingParams(banned=frozenset({7, 3})), 5)
    assert body["logit_bias"] == {"3": -100, "7": -100}
    assert "logit_bias" not in b.request_body(b.new_sequence(), SamplingParams(), 5)


@pytest.mark.parametrize("n_seq", [1, 2])
async def test_llama_cpp_greedy_text_avoids_banned_tokens(n_seq):
    pytest.importorskip("llama_cpp")
    from agent.backends.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(default_model_path(), n_ctx=256, n_seq=n_seq)
    try:
        prompt = b.encode(b.chat_prompt([{"role": "user", "content": "Count from 1 to 9."}]), special=True)

        async def greedy(params: SamplingParams) -> list[int]:
            return [t async for t in b.stream(b.new_sequence(), list(prompt), params)]

        free = await greedy(SamplingParams(max_tokens=12))
        banned = frozenset(free[:3])
        held = await greedy(SamplingParams(max_tokens=12, banned=banned))
        assert len(held) == 12 and not banned & set(held), (b.decode(free), b.decode(held))
    finally:
        await b.aclose()
