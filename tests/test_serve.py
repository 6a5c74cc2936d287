"""``agent serve`` through the openai client: concurrency, streaming with a real python call,
limits per request, the API key and the refusal to serve a public address without one."""

from __future__ import annotations

import asyncio
import re

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from agent import Agent, ScriptedBackend  # noqa: E402
from agent.cli import main  # noqa: E402
from agent.errors import ConfigError  # noqa: E402
from agent.serve import ServeConfig, serving  # noqa: E402


def script(context: str) -> str:
    """'compute' questions run python (a real sandbox), 'echo N' questions answer N."""
    turn = context.rsplit("<|assistant|>", 1)[-1]  # after the system prompt's examples
    if "compute" in context:
        if "<result_start>" in turn:
            got = turn.rsplit("<result_start>", 1)[1].split("<result_end>")[0].strip()
            return f"It printed {got}. <answer_start>{got}<answer_end>"
        return "Let me run it. <code_start>print(6 * 7)<code_end>"
    m = re.findall(r"echo (\d+)", context)
    return f"Echoing. <answer_start>{m[-1] if m else '?'}<answer_end>"


class Overlap(ScriptedBackend):
    """Counts how many episodes stream at once."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.active = self.peak = 0

    async def stream(self, seq, append, params):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            async for t in super().stream(seq, append, params):
                yield t
        finally:
            self.active -= 1


def client(url: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


async def test_eight_concurrent_requests_one_streamed_with_a_python_call():
    backend = Overlap(script, token_delay_s=0.002)
    async with Agent(backend, tools=["python"], syntax="splice") as agent, \
            serving(agent, ServeConfig(port=0, max_concurrent=8)) as s, client(s.url) as c:

        async def plain(i: int):
            return await c.chat.completions.create(model="splice", messages=[{"role": "user", "content": f"echo {i}"}])

        async def streamed():
            chunks = []
            stream = await c.chat.completions.create(
                model="splice", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "compute 6*7"}])
            async for chunk in stream:
                chunks.append(chunk)
            return chunks

        results = await asyncio.gather(*[plain(i) for i in range(7)], streamed())
    for i, r in enumerate(results[:7]):
        assert r.splice["answer"] == str(i) and r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == f"Echoing. <answer_start>{i}<answer_end>"
        assert r.usage.completion_tokens > 0 and r.splice["tool_calls"] == []
    chunks = results[7]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ("Let me run it. <code_start>print(6 * 7)<code_end>\n<result_start>\n42\n<result_end>\n"
                    "It printed 42. <answer_start>42<answer_end>")
    events = [ch.splice for ch in chunks if getattr(ch, "splice", None)]
    assert events[0] == {"event": "tool_call", "tool": "python", "arguments": "print(6 * 7)"}
    assert events[1]["event"] == "tool_result" and events[1]["result"] == "42" and not events[1]["error"]
    assert events[-1]["answer"] == "42" and events[-1]["stop_reason"] == "answer"
    assert [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason] [0].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert backend.peak > 1  # the requests were served concurrently, not one after another


async def test_a_request_without_the_key_is_refused_with_401():
    async with Agent(ScriptedBackend(script), tools=[]) as agent, \
            serving(agent, ServeConfig(port=0, key="s3cret")) as s:
        msgs = [{"role": "user", "content": "echo 5"}]
        for key in ("none", "s3cret-not", "S3CRET"):
            async with client(s.url, key) as c:
                with pytest.raises(openai.AuthenticationError) as e:
                    await c.chat.completions.create(model="m", messages=msgs)
            assert e.value.status_code == 401 and "API key" in str(e.value)
        import httpx

        async with httpx.AsyncClient() as h:
            r = await h.post(s.url + "/v1/chat/completions", json={"messages": msgs})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert (await h.get(s.url + "/v1/models")).status_code == 401
        async with client(s.url, "s3cret") as c:
            ok = await c.chat.completions.create(model="m", messages=msgs)
        assert ok.splice["answer"] == "5"


def test_a_public_address_needs_a_key(monkeypatch, capsys):
    monkeypatch.delenv("SPLICE_SERVE_KEY", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        with pytest.raises(ConfigError, match="refusing to serve .* without an API key"):
            ServeConfig(host=host)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.9"):
        assert ServeConfig(host=host).key == ""
    assert ServeConfig(host="0.0.0.0", key="k").key == "k"
    assert "k" not in repr(ServeConfig(host="0.0.0.0", key="k")).replace("key=", "")
    assert main(["serve", "--host", "0.0.0.0", "--model", "/no/such/model.gguf"]) == 2  # before any model loads
    assert "refusing to serve on '0.0.0.0' without an API key" in capsys.readouterr().err
    monkeypatch.setenv("SPLICE_SERVE_KEY", "from-env")
    assert ServeConfig(host="0.0.0.0").key == "from-env"


async def test_limits_per_request_and_bad_requests():
    long = "word " * 50 + "<answer_start>x<answer_end>"
    async with Agent(ScriptedBackend(lambda ctx: long if "long" in ctx else script(ctx)), tools=["python"],
                     max_new_tokens=100, max_tool_calls=4) as agent, \
            serving(agent, ServeConfig(port=0)) as s, client(s.url) as c:
        short = await c.chat.completions.create(model="m", max_tokens=7, messages=[{"role": "user", "content": "long"}])
        assert short.usage.completion_tokens == 7 and short.choices[0].finish_reason == "length"
        capped = await c.chat.completions.create(model="m", max_tokens=10**6, messages=[{"role": "user", "content": "long"}])
        assert capped.usage.completion_tokens == 100  # the server's --max-new-tokens caps the request's
        no_tools = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "compute"}],
                                                   extra_body={"splice": {"max_tool_calls": 0}})
        assert "tool call limit (0) reached" in no_tools.splice["tool_calls"][0]["result"]
        answer = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "compute"}],
                                                 extra_body={"splice": {"content": "answer"}})
        assert answer.choices[0].message.content == "42"
        bad = [
            ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "client-side tools"),
            ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x", "tool_call_id": "1"}]},
             "tool messages are not accepted"),
            ({"messages": [{"role": "assistant", "content": "hi"}]}, "last message must be the user's"),
            ({"temperature": 5}, "temperature must be in"),
            ({"n": 2}, "n must be 1"),
        ]
        for extra, msg in bad:
            body = {"model": "m", "messages": [{"role": "user", "content": "echo 1"}], **extra}
            with pytest.raises(openai.BadRequestError, match=msg):
                await c.chat.completions.create(**body)


async def test_a_request_past_its_time_is_cut():
    async with Agent(ScriptedBackend(lambda ctx: "slow " * 400, token_delay_s=0.01), tools=[]) as agent, \
            serving(agent, ServeConfig(port=0, request_timeout_s=0.3)) as s, client(s.url) as c:
        with pytest.raises(openai.APIStatusError) as e:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
        assert e.value.status_code == 504
        stream = await c.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "q"}])
        with pytest.raises(openai.APIError, match="ran past 0.3 s"):
            async for _ in stream:
                pass


@pytest.mark.slow
async def test_a_real_model_serves_concurrent_requests(tiny_model_dir):
    from agent.backends.transformers import TransformersBackend, load_hf

    model, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    async with Agent(TransformersBackend(model=model, tokenizer=tok), tools=[], max_new_tokens=6) as agent, \
            serving(agent, ServeConfig(port=0)) as s, client(s.url) as c:
        msgs = [{"role": "user", "content": "what is the sum"}]
        plain = [c.chat.completions.create(model="m", messages=msgs, seed=i) for i in range(7)]

        async def streamed():
            out = []
            async for ch in await c.chat.completions.create(model="m", messages=msgs, stream=True):
                out.append(ch)
            return out

        *answers, chunks = await asyncio.gather(*plain, streamed())
    texts = {a.choices[0].message.content for a in answers}
    assert len(texts) == 1  # greedy: every request gets the same text, however they interleave
    assert all(0 < a.usage.completion_tokens <= 6 for a in answers)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == texts.pop()
