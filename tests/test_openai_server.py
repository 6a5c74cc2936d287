"""The openai backend against a real ``llama_cpp.server`` on loopback: the trajectory's sampled ids
are the tokens the server says it sampled, with the server's log-probs, and what the server did not
report is counted as re-encoded (``Trajectory.token_exact`` False), never passed off as sampled.

llama-cpp-python's server reports each sampled token as text (``logprobs.tokens``), not as an id;
the backend takes the one vocabulary entry spelling it. What the server streamed is recorded here
independently of the backend's parsing and compared token by token."""

from __future__ import annotations

import contextlib
import math

import pytest
from test_openai_backend import server  # noqa: F401 - the module-scoped llama_cpp.server fixture

from agent import Agent
from agent.backends.openai import OpenAIBackend, stop_pairs
from agent.syntax import get_syntax
from tools.base import FunctionTool

pytestmark = pytest.mark.slow


class Recording(OpenAIBackend):
    """Forces a calc call, then an answer (llama.cpp's ``grammar``), and records what each request
    streamed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.requests: list[list[dict]] = []
        self.calls = 0

    def request_body(self, seq, params, max_tokens):
        body = super().request_body(seq, params, max_tokens)
        body["grammar"] = ('root ::= "Let me see. <calc_start>6*7<calc_end>"' if not self.calls
                           else 'root ::= "<answer_start>" [0-9] [0-9]? "<answer_end>"')
        return body

    async def _events(self, body):
        self.requests.append([])
        async with contextlib.aclosing(super()._events(body)) as events:
            async for choice in events:
                self.requests[-1].append(choice)
                yield choice

    async def stream(self, seq, append, params):
        try:
            async for tok in super().stream(seq, append, params):
                yield tok
        finally:  # the runtime closes the stream at the call's close tag
            self.calls += 1


def _calc(expression: str) -> str:
    """Multiplies two integers written a*b."""
    a, b = expression.strip().split("*")
    return str(int(a) * int(b))


async def test_trajectory_ids_are_the_ids_the_server_reports(server):  # noqa: F811
    calc = FunctionTool(_calc, name="calc")
    b = Recording(server, tokenizer="default", stop=stop_pairs(get_syntax("splice"), ["calc"]))
    async with b:
        t = await Agent(b, tools=[calc], max_new_tokens=40).run("What is 6*7?")
    assert [c.result for c in t.tool_calls] == ["42"]
    model = [s for s in t.segments if s.source == "model"]
    streamed = [r for r in b.requests if r]  # the first try may be a rejected token-id prompt
    assert len(streamed) == len(model) == 2
    re_encoded = 0
    for seg, choices in zip(model, streamed):
        pieces = [p for c in choices if c.get("logprobs") for p in c["logprobs"]["tokens"]]
        server_lps = [x for c in choices if c.get("logprobs") for x in c["logprobs"]["token_logprobs"]]
        n = len(pieces)
        assert n > 3
        # the segment starts with exactly the tokens the server reported, with its log-probs
        assert [b.tok.decode([i], special=True) for i in seg.token_ids[:n]] == pieces
        assert seg.logprobs[:n] == pytest.approx(server_lps)
        # the server reports only the first token of a matched stop string: the rest of the close
        # tag is put back re-encoded, without log-probs, and counted
        rest = seg.token_ids[n:]
        assert all(math.isnan(x) for x in seg.logprobs[n:])
        assert b.tok.decode(seg.token_ids).endswith(("<calc_end>", "<answer_end>"))
        re_encoded += len(rest)
    assert "".join(s.text for s in model).startswith("Let me see. <calc_start>6*7<calc_end>")
    assert not t.token_exact and t.meta["retokenized"] == re_encoded > 0
