"""``agent serve``: an OpenAI-compatible chat endpoint that runs splice's tool loop on the server.

Routes: ``POST /v1/chat/completions`` (streamed with ``"stream": true``, or not), ``GET /v1/models``,
``GET /health``. Each request is one episode of the served ``Agent``: the last message is the
question, the earlier ones are history, and the model's tool calls run here, in its token stream, on
the server's tools. Any OpenAI client gets the tool-augmented answer.

How tool calls show in a response
  ``message.content`` (``delta.content`` when streamed) is the assistant turn as the model wrote it,
  calls, spliced results and the final answer included, in the active syntax's tags: a chat UI shows
  the whole exchange. The structured record is an extra field ``splice`` (the openai client keeps it:
  ``completion.splice``, ``chunk.splice``): on the completion (and the last chunk) ``{"answer",
  "stop_reason", "tool_calls": [{"tool", "arguments", "result", "error", "malformed"}]}``; a chunk
  that carries a call or a result has ``{"event": "tool_call" | "tool_result", ...}``. With
  ``extra_body={"splice": {"content": "answer"}}`` the content is the final answer alone. OpenAI's
  own ``tool_calls`` field is not used: it asks the client to run the calls, and they already ran.

Limits per request
  ``max_tokens`` / ``max_completion_tokens`` are capped at the server's ``--max-new-tokens``;
  ``extra_body={"splice": {"max_tool_calls": n}}`` at its ``--max-tool-calls``; ``temperature``,
  ``top_p`` and ``seed`` apply to the request only; ``--request-timeout-s`` bounds its wall clock
  (504 when it runs out; a stream ends with an error event); at most ``--max-concurrent`` episodes run
  at once and the rest wait. Concurrent episodes share the one model: a batched backend
  (``--backend batched``, or llama.cpp with ``--n-seq``) decodes them together. Client-side
  ``tools``, ``tool`` messages and ``n > 1`` are refused with 400.

Security
  The server runs model-written code for whoever can reach it. It binds 127.0.0.1 by default;
  any other address needs an API key (``--key`` or ``$SPLICE_SERVE_KEY``), else it refuses to start.
  With a key set (on any address), every request needs ``Authorization: Bearer KEY`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from agent.errors import ConfigError, SpliceError, require
from agent.runtime import Agent, DoneEvent, RuntimeConfig, TokenEvent, ToolCallStarted, ToolResultEvent
from agent.trajectory import ToolCall, Trajectory
from tools.base import check_timeout

__all__ = ["ServeConfig", "create_app", "serving", "serve_forever", "is_loopback"]

KEY_ENV = "SPLICE_SERVE_KEY"


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; anything but loopback needs --key"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port)"})
    key: str = field(default="", metadata={"help": f"API key clients must send as 'Authorization: Bearer KEY' "
                                           f"(else ${KEY_ENV}); required for a non-loopback --host"})
    max_concurrent: int = field(default=8, metadata={"help": "episodes run at once; further requests wait"})
    request_timeout_s: float = field(default=300.0, metadata={"help": "wall-clock limit per request"})

    def __post_init__(self) -> None:
        self.key = self.key or os.environ.get(KEY_ENV, "")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535 (got {self.port})")
        if self.max_concurrent <= 0:
            raise ConfigError(f"max_concurrent must be > 0 (got {self.max_concurrent})")
        check_timeout("request_timeout_s", self.request_timeout_s, "--request-timeout-s 300")
        if not is_loopback(self.host) and not self.key:
            raise ConfigError(f"refusing to serve on {self.host!r} without an API key: anyone who can reach it could "
                              f"run code through the model; pass --key KEY (or set {KEY_ENV}), or bind 127.0.0.1")

    def __repr__(self) -> str:  # never print the key
        return (f"ServeConfig(host={self.host!r}, port={self.port}, key={'***' if self.key else ''!r}, "
                f"max_concurrent={self.max_concurrent}, request_timeout_s={self.request_timeout_s})")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


# -- requests ---------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class _Request:
    question: str
    history: list[dict[str, str]]
    overrides: dict[str, Any]
    seed: int
    stream: bool
    include_usage: bool
    answer_only: bool


def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequest("only text content parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest("content must be a string or a list of text parts", f"messages[{i}].content")


def _number(body: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}", key)
    if not low <= v <= high:
        raise BadRequest(f"{key} must be in [{low}, {high}] (got {v})", key)
    return v


def parse_request(body: Any, cfg: RuntimeConfig) -> _Request:
    """A chat completion request as an episode, with limits capped at the server's (``cfg``)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key):
            raise BadRequest(f"client-side tools are not supported ({key!r}): this server runs its own tools "
                             f"({', '.join(cfg.tools) or 'none'}) inside the model's token stream", key)
    if body.get("n", 1) != 1:
        raise BadRequest("n must be 1", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant") or m.get("tool_calls"):
            raise BadRequest(f"messages[{i}]: role must be system, user or assistant (tool messages are not "
                             "accepted: the server runs the tools)", f"messages[{i}].role")
        turns.append({"role": role, "content": _text(m.get("content"), i)})
    if turns[-1]["role"] != "user":
        raise BadRequest("the last message must be the user's", "messages")
    overrides: dict[str, Any] = {}
    max_tokens = _number(body, "max_completion_tokens", int, 1, 10**9) or _number(body, "max_tokens", int, 1, 10**9)
    if max_tokens:
        overrides["max_new_tokens"] = min(max_tokens, cfg.max_new_tokens)
    for key, name, kind, low, high in (("temperature", "temperature", float, 0, 2), ("top_p", "top_p", float, 0, 1)):
        v = _number(body, key, kind, low, high)
        if v is not None:
            overrides[name] = float(v)
    if overrides.get("top_p") == 0:
        raise BadRequest("top_p must be > 0", "top_p")
    extra = body.get("splice") or {}
    if not isinstance(extra, dict):
        raise BadRequest("splice must be an object", "splice")
    calls = _number(extra, "max_tool_calls", int, 0, 10**6)
    if calls is not None:
        overrides["max_tool_calls"] = min(calls, cfg.max_tool_calls)
    if extra.get("content", "transcript") not in ("transcript", "answer"):
        raise BadRequest("splice.content must be 'transcript' or 'answer'", "splice.content")
    seed = _number(body, "seed", int, -(2**63), 2**63 - 1)
    opts = body.get("stream_options") or {}
    return _Request(turns[-1]["content"], turns[:-1], overrides, cfg.seed if seed is None else seed,
                    bool(body.get("stream")), bool(isinstance(opts, dict) and opts.get("include_usage")),
                    extra.get("content") == "answer")


def _episode_agent(agent: Agent, overrides: dict[str, Any]) -> Agent:
    """The served agent with this request's limits: same model, tools and syntax (a shallow copy
    whose config differs; it is never closed, the served one owns everything)."""
    if not overrides:
        return agent
    clone = copy.copy(agent)
    clone.config = replace(agent.config, **overrides)
    return clone


# -- responses --------------------------------------------------------------------------------
def _call_record(c: ToolCall) -> dict[str, Any]:
    return {"tool": c.tool, "arguments": c.arg, "result": c.result, "error": c.error, "malformed": c.malformed}


def _summary(traj: Trajectory) -> dict[str, Any]:
    return {"answer": traj.answer, "stop_reason": traj.stop_reason,
            "tool_calls": [_call_record(c) for c in traj.tool_calls]}


def _finish_reason(traj: Trajectory) -> str:
    return "length" if traj.stop_reason in ("max_new_tokens", "context") else "stop"


def _usage(traj: Trajectory) -> dict[str, int]:
    prompt = traj.prompt_len
    completion = len(traj.token_ids) - prompt
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Chunks:
    """Chat completion chunks for one streamed episode."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        """One SSE event; ``delta=None`` gives a chunk with no choices (the usage chunk)."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.agent.backend.model_id, "choices": choices, **extra})

    def for_event(self, ev: Any) -> str | None:
        syntax = self.agent.syntax
        if isinstance(ev, TokenEvent):
            return self.chunk({"content": ev.text}) if ev.text else None
        if isinstance(ev, ToolCallStarted):
            tool = self.agent.tools.get(ev.tool)
            arg: Any = ev.arg
            if tool is not None and tool.takes_object:
                with contextlib.suppress(ValueError):
                    arg = json.loads(ev.arg)
            text = syntax.render_call(ev.tool, arg, tool.arg_name if tool else "input")
            return self.chunk({"content": text}, splice={"event": "tool_call", "tool": ev.tool, "arguments": ev.arg})
        if isinstance(ev, ToolResultEvent):
            c = ev.call
            spliced = "".join(p for p, _ in syntax.splice_pieces("", c.result, self.agent.tools))
            text = (c.arg if c.malformed else "") + spliced
            return self.chunk({"content": text}, splice={"event": "tool_result", **_call_record(c)})
        return None


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(agent: Agent, cfg: ServeConfig) -> Any:
    """The Starlette app serving ``agent`` (which the caller keeps open while it runs)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    gate = asyncio.Semaphore(cfg.max_concurrent)
    expected = f"Bearer {cfg.key}".encode()

    def denied(request: Request) -> Response | None:
        if not cfg.key:
            return None
        got = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(got, expected):
            return None
        return JSONResponse(_error_body("missing or wrong API key: send 'Authorization: Bearer KEY'",
                                        code="invalid_api_key"), status_code=401)

    async def health(request: Request) -> Response:
        return denied(request) or JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return denied(request) or JSONResponse({"object": "list", "data": [
            {"id": agent.backend.model_id, "object": "model", "created": 0, "owned_by": "splice"}]})

    async def completions(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        try:
            req = parse_request(await request.json(), agent.config)
            episode = _episode_agent(agent, req.overrides)
        except ValueError as e:  # a body that is not JSON (JSONDecodeError), or a ConfigError from limits
            return JSONResponse(_error_body(f"bad request: {e}"), status_code=400)
        except BadRequest as e:
            return JSONResponse(_error_body(str(e), param=e.param), status_code=400)
        if req.stream:
            return StreamingResponse(_stream(episode, req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            async with gate:
                async with asyncio.timeout(cfg.request_timeout_s):
                    traj = await episode.run(req.question, req.history, seed=req.seed)
        except TimeoutError:
            return JSONResponse(_error_body(f"the request ran past {cfg.request_timeout_s:g} s", "timeout"),
                                status_code=504)
        except SpliceError as e:
            return JSONResponse(_error_body(f"{type(e).__name__}: {e}", "server_error"), status_code=500)
        content = (traj.answer or "") if req.answer_only else traj.text
        return JSONResponse({
            "id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
            "model": agent.backend.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": _finish_reason(traj)}],
            "usage": _usage(traj), "splice": _summary(traj)})

    async def _stream(episode: Agent, req: _Request) -> AsyncIterator[str]:
        out = _Chunks(episode)
        yield out.chunk({"role": "assistant", "content": ""})
        async with gate:
            deadline = asyncio.get_running_loop().time() + cfg.request_timeout_s
            events = episode.stream(req.question, req.history, seed=req.seed)
            traj: Trajectory | None = None
            try:
                while traj is None:
                    try:
                        async with asyncio.timeout_at(deadline):  # never held across a yield
                            ev = await anext(events)
                    except TimeoutError:
                        yield _sse(_error_body(f"the request ran past {cfg.request_timeout_s:g} s", "timeout"))
                        return
                    except SpliceError as e:
                        yield _sse(_error_body(f"{type(e).__name__}: {e}", "server_error"))
                        return
                    if isinstance(ev, DoneEvent):
                        traj = ev.trajectory
                    elif not req.answer_only and (text := out.for_event(ev)) is not None:
                        yield text
            finally:
                await events.aclose()
        if req.answer_only:
            yield out.chunk({"content": traj.answer or ""})
        elif traj.stop_reason == "answer" and traj.answer is not None:
            yield out.chunk({"content": episode.syntax.render_answer(traj.answer)})
        yield out.chunk({}, _finish_reason(traj), splice=_summary(traj))
        if req.include_usage:
            yield out.chunk(None, usage=_usage(traj))
        yield "data: [DONE]\n\n"

    return Starlette(routes=[Route("/health", health), Route("/v1/models", models),
                             Route("/v1/chat/completions", completions, methods=["POST"])])


# -- running ----------------------------------------------------------------------------------
@dataclass
class Serving:
    url: str  # http://host:port (the OpenAI base_url is url + "/v1")
    server: Any
    task: asyncio.Task

    def stop(self) -> None:
        """Finish the requests in flight, then stop; a second call stops at once."""
        if self.server.should_exit:
            self.server.force_exit = True
        self.server.should_exit = True


@contextlib.asynccontextmanager
async def serving(agent: Agent, cfg: ServeConfig) -> AsyncIterator[Serving]:
    """Serve ``agent`` while the block runs: ``async with serving(agent, cfg) as s: ... s.url``."""
    uvicorn = require("uvicorn", "serve")
    require("starlette", "serve")
    host = cfg.host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, cfg.port))
    except OSError:
        sock.close()
        raise
    port = sock.getsockname()[1]
    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # signals belong to the caller (serve_forever handles them)
            yield

    server = Server(uvicorn.Config(create_app(agent, cfg), log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))  # awaited below
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise SpliceError("the server stopped while starting")
            await asyncio.sleep(0.01)
        yield Serving(f"http://{'[' + host + ']' if ':' in host else host}:{port}", server, task)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def serve_forever(runtime: RuntimeConfig, cfg: ServeConfig) -> int:
    """``agent serve``: load the agent, serve until interrupted."""
    async with Agent(runtime.model, tools=runtime.tools, syntax=runtime.syntax, config=runtime) as agent:
        async with serving(agent, cfg) as s:
            tools = ", ".join(agent.tools) or "no tools"
            print(f"agent: serving {agent.backend.model_id} ({tools}) at {s.url}/v1"
                  f"{' (API key required)' if cfg.key else ''}; Ctrl-C to stop", file=sys.stderr)
            loop = asyncio.get_running_loop()
            signals = [sig for sig in (signal.SIGINT, signal.SIGTERM) if _on_signal(loop, sig, s.stop)]
            try:
                await s.task
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
    print("agent: stopped", file=sys.stderr)
    return 0


def _on_signal(loop: asyncio.AbstractEventLoop, sig: int, callback: Any) -> bool:
    try:
        loop.add_signal_handler(sig, callback)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal here
        return False
    return True
