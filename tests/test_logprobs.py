"""Sampled log-probs: every backend that can records the log-prob of each sampled token
(``Sequence.logprobs``), the runtime keeps them per model segment, ``Trajectory`` round-trips them
and lines them up with ``completion_ids``. The openai backend uses the ids a server reports and flags
the ones it had to re-encode from text (``Trajectory.token_exact``)."""

from __future__ import annotations

import contextlib
import json
import math

import httpx
import pytest
from chartok import Chars

from agent import Agent
from agent.backends.base import SamplingParams
from agent.backends.openai import OpenAIBackend, stop_pairs
from agent.backends.scripted import ScriptedBackend
from agent.syntax import get_syntax
from agent.trajectory import Segment, Trajectory
from tools.base import FunctionTool


def _double(text: str) -> str:
    """Doubles a number."""
    return str(2 * int(text))


DOUBLE = FunctionTool(_double, name="double")


# -- runtime + trajectory (scripted backend) --------------------------------------------------------
async def test_segments_keep_the_backends_logprobs_and_align_with_completion_ids():
    script = ["ab<double_start>21<double_end>", "<answer_start>42<answer_end>"]
    backend = ScriptedBackend(script, logprobs=lambda ids, tok: -tok / 1000)
    t = await Agent(backend, tools=[DOUBLE]).run("q")
    assert [c.result for c in t.tool_calls] == ["42"]
    model = [s for s in t.segments if s.source == "model"]
    assert len(model) == 2
    for s in model:
        assert s.logprobs == [-tok / 1000 for tok in s.token_ids]
    got = t.sampled_logprobs(fill=7.0)
    assert len(got) == len(t.completion_ids)
    for tok, m, lp in zip(t.completion_ids, t.completion_mask, got):
        assert lp == (-tok / 1000 if m else 7.0)
    assert any(m == 0 for m in t.completion_mask)  # the result really is in the completion


async def test_a_backend_that_cannot_say_gives_nan():
    t = await Agent(ScriptedBackend(["<answer_start>1<answer_end>"]), tools=[]).run("q")
    lps = t.sampled_logprobs()
    assert lps and all(math.isnan(x) for x in lps)


def test_json_round_trip_keeps_logprobs_and_writes_nan_as_null():
    seg = Segment("model", "ab", [97, 98], logprobs=[-0.5, math.nan])
    t = Trajectory("q", segments=[Segment("prompt", "p", [1]), seg], meta={"retokenized": 1})
    line = t.to_json()
    raw = json.loads(line)  # strict JSON parsers never meet NaN
    assert raw["segments"][1]["logprobs"] == [-0.5, None]
    back = Trajectory.from_json(line)
    assert back.segments[1].logprobs[0] == -0.5 and math.isnan(back.segments[1].logprobs[1])
    assert not back.token_exact
    old = {"question": "q", "segments": [{"source": "model", "text": "a", "token_ids": [97]}]}
    legacy = Trajectory.from_dict(old)  # written before log-probs were kept
    assert legacy.token_exact and math.isnan(legacy.sampled_logprobs()[0])


# -- transformers and batched backends: the model's own log-probs ----------------------------------
@pytest.mark.parametrize("kind", ["transformers", "batched"])
async def test_recorded_logprobs_are_the_models_own(tiny_model_dir, kind):
    torch = pytest.importorskip("torch")
    from agent.backends.transformers import TransformersBackend, load_hf

    model, tok = load_hf(tiny_model_dir, "cpu")
    if kind == "batched":
        from agent.backends.batched import BatchedTransformersBackend

        backend = BatchedTransformersBackend(model=model, tokenizer=tok, max_batch=2, max_len=256)
    else:
        backend = TransformersBackend(model=model, tokenizer=tok)
    async with backend:
        # sampled at temperature 1.5 with top-p: the record is still the unscaled distribution's
        agent = Agent(backend, tools=[], temperature=1.5, top_p=0.9, max_new_tokens=12)
        t = await agent.run("What is 2+2?", seed=3)
    ids = t.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    own = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    want = own[t.prompt_len - 1:].tolist()
    got = t.sampled_logprobs()
    assert len(got) == len(t.completion_ids) == len(want) > 0
    assert got == pytest.approx(want, abs=1e-4)


# -- openai backend: reported ids, reported log-probs, and the flag ---------------------------------
def _sse(*choices: dict) -> bytes:
    lines = [f"data: {json.dumps({'choices': [c]})}\n\n" for c in choices]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def _mock(bodies: list[dict], reply: bytes) -> OpenAIBackend:
    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(req.content))
        return httpx.Response(200, content=reply)

    b = OpenAIBackend("http://mock/v1", "m", tokenizer=Chars(), transport=httpx.MockTransport(handler),
                      stop=stop_pairs(get_syntax("splice"), ["search"]), backoff_s=0.001)
    b._checked = True
    return b


async def _stream(b: OpenAIBackend):
    seq = b.new_sequence()
    async with contextlib.aclosing(b.stream(seq, [81], SamplingParams(max_tokens=50))) as it:
        toks = [t async for t in it]
    await b.aclose()
    return seq, toks


async def test_openai_uses_the_ids_the_server_reports_not_the_text():
    # the server says it sampled 500 and 501 for "hi": a re-encoding of the text would give 104, 105
    reply = _sse({"text": "hi", "token_ids": [500, 501], "logprobs": {"tokens": ["h", "i"],
                                                                      "token_logprobs": [-0.25, -1.5]},
                  "finish_reason": None},
                 {"text": "", "token_ids": [0], "logprobs": {"tokens": [""], "token_logprobs": [-0.125]},
                  "finish_reason": "stop", "stop_reason": None})
    bodies: list[dict] = []
    seq, toks = await _stream(_mock(bodies, reply))
    assert toks == [500, 501, 0]
    assert seq.logprobs == [-0.25, -1.5, -0.125]
    assert seq.n_retokenized == 0
    assert bodies[0]["return_token_ids"] is True and bodies[0]["logprobs"] >= 1


async def test_openai_reads_llama_server_style_ids_and_logprobs():
    reply = _sse({"text": "hi", "logprobs": {"content": [{"id": 7, "token": "h", "logprob": -0.5},
                                                         {"id": 8, "token": "i", "logprob": -0.75}]},
                  "finish_reason": "length"})
    seq, toks = await _stream(_mock([], reply))
    assert toks == [7, 8] and seq.logprobs == [-0.5, -0.75] and seq.n_retokenized == 0


async def test_openai_token_pieces_map_to_ids_and_a_reported_stop_token_is_not_doubled():
    # llama-cpp-python: only token texts; the stop token's text comes in a chunk with empty text
    reply = _sse({"text": "<search_start>x", "logprobs": {"tokens": list("<search_start>x"),
                                                          "token_logprobs": [-1.0] * 15}, "finish_reason": None},
                 {"text": "", "logprobs": {"tokens": list("<search_end>"), "token_logprobs": [-2.0] * 12},
                  "finish_reason": None},
                 {"text": "", "logprobs": None, "finish_reason": "stop"})
    seq, toks = await _stream(_mock([], reply))
    assert "".join(map(chr, toks)) == "<search_start>x<search_end>"
    assert seq.logprobs == [-1.0] * 15 + [-2.0] * 12
    assert seq.n_retokenized == 0


async def test_openai_reads_vllm_token_id_strings():
    reply = _sse({"text": "hi", "logprobs": {"tokens": ["token_id:300", "token_id:301"],
                                             "token_logprobs": [-0.5, -0.25]}, "finish_reason": "length"})
    seq, toks = await _stream(_mock([], reply))
    assert toks == [300, 301] and seq.logprobs == [-0.5, -0.25] and seq.n_retokenized == 0


async def test_openai_flags_ids_it_had_to_re_encode():
    reply = _sse({"text": "<search_start>cats", "finish_reason": "stop"})  # no ids, no log-probs
    seq, toks = await _stream(_mock([], reply))
    assert "".join(map(chr, toks)) == "<search_start>cats<search_end>"  # the close tag is put back
    assert seq.n_retokenized == len(toks)
    assert all(math.isnan(x) for x in seq.logprobs) and len(seq.logprobs) == len(toks)


async def test_the_flag_reaches_the_trajectory():
    reply = _sse({"text": "<answer_start>1<answer_end>", "finish_reason": "stop", "stop_reason": None})
    b = _mock([], reply)
    t = await Agent(b, tools=[]).run("q")
    await b.aclose()
    assert not t.token_exact and t.meta["retokenized"] == t.n_generated
