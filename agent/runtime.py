"""The loop: generate -> parse -> dispatch -> splice -> resume, on one backend sequence.

``Agent.stream`` is the core; ``run``, ``run_many`` and ``Conversation`` consume it. Tool sessions
are opened lazily per episode inside an ``AsyncExitStack`` and closed when the episode ends, is
cancelled or fails, so a cancelled episode leaves no tool process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from typing import Any

from agent.backends.base import Backend, SamplingParams, Sequence
from agent.config import dump_config
from agent.errors import ConfigError
from agent.syntax import (
    AnswerEvent,
    CallEvent,
    MalformedEvent,
    StreamParser,
    TextEvent,
    ToolSyntax,
    extract_answer,
    get_syntax,
)
from agent.trajectory import Segment, ToolCall, Trajectory
from tools.base import Tool, ToolCallable, ToolOutput, get_tool, truncate_tokens

__all__ = ["RuntimeConfig", "Agent", "Conversation", "Event", "TokenEvent", "ToolCallStarted",
           "ToolResultEvent", "DoneEvent", "Detokenizer"]

log = logging.getLogger("splice.runtime")


@dataclass
class RuntimeConfig:
    model: str = field(default="default",
                       metadata={"help": "'default' (embedded SmolLM2), a .gguf file or a HF model dir"})
    backend: str = field(default="auto", metadata={"help": "auto | llama_cpp | transformers | batched | openai"})
    tools: list[str] = field(default_factory=lambda: ["python", "search"],
                             metadata={"help": "tools to enable: names or module:attr import paths"})
    syntax: str = field(default="splice", metadata={"help": "tag syntax: splice, search-r1, nanochat, tora, hermes"})
    system: str = field(default="", metadata={"help": "identity line put first in the system prompt"})
    max_tool_calls: int = field(default=8, metadata={"help": "tool calls per episode before it is stopped"})
    max_new_tokens: int = field(default=512, metadata={"help": "model tokens per episode (tool results excluded)"})
    max_context: int = field(default=0, metadata={"help": "context budget in tokens (0 = the model's context size)"})
    max_result_tokens: int = field(default=256, metadata={"help": "tool output kept per call (head+tail)"})
    tool_timeout_s: float = field(default=10.0, metadata={"help": "seconds per tool call"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    seed: int = field(default=0, metadata={"help": "sampling seed (episode i uses seed + i)"})
    search_backend: str = field(default="auto", metadata={"help": "auto (local with --search-index, http with "
                                "--search-url, else web) | local | web | http"})
    search_index: str = field(default="", metadata={"help": "local search index (SQLite) path"})
    search_url: str = field(default="", metadata={"help": "http retriever URL (Search-R1 /retrieve)"})
    sandbox: str = field(default="process", metadata={"help": "python sandbox backend: process | docker"})
    device: str = field(default="auto", metadata={"help": "transformers device: auto | cpu | cuda"})
    n_ctx: int = field(default=4096, metadata={"help": "context size (llama.cpp n_ctx; batched slot length)"})
    max_batch: int = field(default=8, metadata={"help": "batched backend: concurrent sequences (slots)"})
    base_url: str = field(default="", metadata={"help": "openai backend: server URL when --model is a model name "
                          "(else OPENAI_BASE_URL)"})
    api_key: str = field(default="", metadata={"help": "openai backend: API key (else OPENAI_API_KEY)"})
    tokenizer: str = field(default="", metadata={"help": "openai backend: local tokenizer: 'default', a .gguf or "
                           "a HF dir"})

    def __post_init__(self) -> None:
        tools = self.tools.split(",") if isinstance(self.tools, str) else self.tools
        self.tools = [t.strip() for t in tools if t and t.strip() != "none"]
        get_syntax(self.syntax)
        for name in ("max_new_tokens", "max_result_tokens", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.max_tool_calls < 0 or self.tool_timeout_s <= 0:
            raise ConfigError("max_tool_calls must be >= 0 and tool_timeout_s > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")

    def tool_options(self, name: str) -> dict[str, Any]:
        if name == "search":
            backend = self.search_backend
            if backend == "auto":
                backend = "local" if self.search_index else "http" if self.search_url else "web"
            opts: dict[str, Any] = {"backend": backend}
            if self.search_index:
                opts["index"] = self.search_index
            if self.search_url:
                opts["url"] = self.search_url
            return opts | {"timeout_s": self.tool_timeout_s}
        if name == "python":
            return {"backend": self.sandbox, "timeout_s": self.tool_timeout_s}
        return {}


# -- events streamed to callers -----------------------------------------------------------------
@dataclass
class TokenEvent:
    text: str


@dataclass
class ToolCallStarted:
    tool: str
    arg: str


@dataclass
class ToolResultEvent:
    call: ToolCall


@dataclass
class DoneEvent:
    trajectory: Trajectory


Event = TokenEvent | ToolCallStarted | ToolResultEvent | DoneEvent


class Detokenizer:
    """Turns a growing list of ids into text increments without splitting UTF-8 characters."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.ids: list[int] = []
        self.prefix = 0  # ids before this are final and emitted
        self.emitted = ""

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.backend.decode(self.ids[self.prefix:])
        if text.endswith("\ufffd"):
            return ""
        new = text[len(self.emitted):]
        if len(self.ids) - self.prefix > 8:  # slide the window so decoding stays O(1) per token
            self.prefix = len(self.ids)
            self.emitted = ""
        else:
            self.emitted = text
        return new


class Agent:
    """A model with tools. ``async with Agent(...) as agent: traj = await agent.run(q)``."""

    def __init__(self, model: str | Backend = "default", tools: Iterable[str | Tool] | None = None,
                 syntax: str | ToolSyntax = "splice", *, config: RuntimeConfig | None = None, **overrides: Any):
        base = config or RuntimeConfig()
        tool_specs = list(tools) if tools is not None else list(base.tools)
        names = [t for t in tool_specs if isinstance(t, str)]
        cfg_over = dict(overrides)
        if isinstance(model, str):
            cfg_over["model"] = model
        if isinstance(syntax, str):
            cfg_over["syntax"] = syntax
        self.config = replace(base, tools=names, **cfg_over)
        self.syntax = get_syntax(syntax)
        self.tools: dict[str, Tool] = {}  # tools first: a bad tool name fails before a model loads
        for spec in tool_specs:
            t = get_tool(spec, **(self.config.tool_options(spec) if isinstance(spec, str) else {}))
            self.tools[t.name] = t
        self._stop_pairs = tuple(self.syntax.stop_pairs(self.tools))
        self.backend = model if isinstance(model, Backend) else _load_backend(self.config)
        self._episode = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> "Agent":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for t in self.tools.values():
            await t.aclose()
        await self.backend.aclose()

    # -- prompt ---------------------------------------------------------------------------------
    def system_prompt(self) -> str:
        from prompts import render

        docs = []
        for t in self.tools.values():
            ex_arg, ex_res = t.examples[0] if t.examples else ("...", "")
            docs.append({
                "name": t.name,
                "description": t.description,
                "example_call": self.syntax.render_call(t.name, ex_arg, t.arg_name),
                "example_result": self.syntax.render_result(ex_res).strip() if ex_res else "",
            })
        return render("system.j2", tools=docs, identity=self.config.system,
                      answer_open=self.syntax.answer_open, answer_close=self.syntax.answer_close).strip()

    def messages(self, question: str, history: Seq[dict[str, str]] = ()) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt()}, *history,
                {"role": "user", "content": question}]

    def _sampling(self, max_tokens: int, seed: int | None) -> SamplingParams:
        c = self.config
        return SamplingParams(temperature=c.temperature, top_p=c.top_p, seed=seed, max_tokens=max_tokens,
                              stop_pairs=self._stop_pairs)

    # -- public API -----------------------------------------------------------------------------
    async def run(self, question: str, history: Seq[dict[str, str]] = (), seed: int | None = None,
                  prefix: str = "") -> Trajectory:
        traj = None
        async with contextlib.aclosing(self.stream(question, history, seed=seed, prefix=prefix)) as events:
            async for ev in events:
                if isinstance(ev, DoneEvent):
                    traj = ev.trajectory
        assert traj is not None
        return traj

    def run_sync(self, question: str, **kw: Any) -> Trajectory:
        """Blocking wrapper for scripts (not for use inside a running event loop)."""
        return asyncio.run(self.run(question, **kw))

    async def run_many(self, questions: Seq[str], concurrency: int = 32) -> list[Trajectory]:
        sem = asyncio.Semaphore(max(1, concurrency))
        out: list[Trajectory | None] = [None] * len(questions)
        first_seed = self.config.seed + self._episode
        self._episode += len(questions)

        async def one(i: int, q: str) -> None:
            async with sem:
                out[i] = await self.run(q, seed=first_seed + i)

        async with asyncio.TaskGroup() as tg:
            for i, q in enumerate(questions):
                tg.create_task(one(i, q))
        return [t for t in out if t is not None]

    def chat(self, history: Seq[dict[str, str]] = ()) -> "Conversation":
        return Conversation(self, list(history))

    async def stream(self, question: str, history: Seq[dict[str, str]] = (),
                     seed: int | None = None, prefix: str = "") -> AsyncIterator[Event]:
        """Run one episode, yielding text as it is sampled, each tool call and result, then Done.

        ``prefix`` is forced text that opens the assistant turn (mask 0, like the prompt); a complete
        tool call in it runs before the model samples anything (teacher forcing, tests, RL warm-up)."""
        if seed is None:
            seed = self.config.seed + self._episode
            self._episode += 1
        episode = _Episode(self, question, list(history), seed, prefix)
        async with contextlib.AsyncExitStack() as stack:
            episode.stack = stack
            try:
                async for ev in episode.loop():
                    yield ev
            finally:
                await self.backend.release(episode.seq)
        yield DoneEvent(episode.traj)


class Conversation:
    """Multi-turn chat that keeps history (tool calls and results included)."""

    def __init__(self, agent: Agent, history: list[dict[str, str]]):
        self.agent = agent
        self.history = history

    async def send(self, message: str) -> Trajectory:
        traj = await self.agent.run(message, self.history)
        self._remember(message, traj)
        return traj

    async def stream(self, message: str) -> AsyncIterator[Event]:
        async for ev in self.agent.stream(message, self.history):
            if isinstance(ev, DoneEvent):
                self._remember(message, ev.trajectory)
            yield ev

    def _remember(self, message: str, traj: Trajectory) -> None:
        self.history += [{"role": "user", "content": message},
                         {"role": "assistant", "content": traj.text.strip()}]


class _Episode:
    """State of one episode; the loop body lives here so Agent stays small."""

    def __init__(self, agent: Agent, question: str, history: list[dict[str, str]], seed: int, prefix: str = ""):
        self.prefix = prefix
        self.agent = agent
        self.cfg = agent.config
        self.backend = agent.backend
        self.syntax = agent.syntax
        self.seq: Sequence = self.backend.new_sequence(seed)
        self.sessions: dict[str, ToolCallable] = {}
        self.stack: contextlib.AsyncExitStack | None = None
        self.traj = Trajectory(question=question, model=self.backend.model_id, syntax=self.syntax.name,
                               meta={"config": dump_config(self.cfg), "seed": seed})
        self.messages = agent.messages(question, history)
        arg_names = {n: t.arg_name for n, t in agent.tools.items()}
        self.parser = StreamParser(self.syntax, list(agent.tools), arg_names)
        self.limit_warned = False

    @property
    def context_limit(self) -> int:
        return min(self.cfg.max_context or self.backend.context_size, self.backend.context_size)

    def _add(self, source: str, text: str, ids: list[int], t0: float) -> None:
        self.traj.segments.append(Segment(source, text, ids, t0, time.perf_counter()))

    async def loop(self) -> AsyncIterator[Event]:
        traj = self.traj
        traj.t_start = time.perf_counter()
        prompt = self.backend.chat_prompt(self.messages)
        append = self.backend.encode(prompt, special=True)
        self._add("prompt", prompt, list(append), traj.t_start)
        try:
            if self.prefix:
                forced = await self._force_prefix()
                if forced is not None:
                    yield ToolCallStarted(forced[0].tool, forced[0].arg)
                    yield ToolResultEvent(forced[0])
                    append = append + self.traj.segments[-2].token_ids + forced[1]
                else:
                    append = append + self.traj.segments[-1].token_ids
            while True:
                budget = min(self.cfg.max_new_tokens - traj.n_generated,
                             self.context_limit - len(self.seq.ids) - len(append))
                if budget <= 0:
                    traj.stop_reason = "max_new_tokens" if traj.n_generated >= self.cfg.max_new_tokens else "context"
                    break
                event, eos = None, False
                async for ev in self._generate(append, budget):
                    if isinstance(ev, TokenEvent):
                        yield ev
                    else:
                        event, eos = ev
                append = []
                if isinstance(event, AnswerEvent):
                    traj.answer, traj.stop_reason = event.answer, "answer"
                    break
                if isinstance(event, (CallEvent, MalformedEvent)):
                    if isinstance(event, CallEvent):
                        yield ToolCallStarted(event.tool, event.arg)
                    call, append = await self._dispatch(event)
                    if call is None:
                        traj.stop_reason = "max_tool_calls"
                        break
                    yield ToolResultEvent(call)
                    continue
                traj.stop_reason = "eos" if eos else "max_new_tokens"
                break
        except asyncio.CancelledError:
            traj.stop_reason = "cancelled"
            raise
        finally:
            traj.t_end = time.perf_counter()
            if traj.answer is None:
                traj.answer = self._fallback_answer()

    async def _force_prefix(self) -> tuple[ToolCall, list[int]] | None:
        """Add the forced prefix as a prompt segment; run a complete call in it."""
        ids = self.backend.encode(self.prefix, special=True)
        self._add("forced", self.prefix, ids, time.perf_counter())
        self.parser.reset()
        events = self.parser.feed(self.prefix)
        call = next((e for e in events if isinstance(e, (CallEvent, MalformedEvent))), None)
        if call is None:
            return None
        result, splice = await self._dispatch(call)
        assert result is not None
        return result, splice

    def _fallback_answer(self) -> str | None:
        text = "".join(s.text for s in self.traj.segments if s.source == "model")
        found = extract_answer(text, self.syntax)
        if found is not None:
            return found
        last = [s for s in self.traj.segments if s.source != "prompt"]
        tail = last[-1].text.strip() if last and last[-1].source == "model" else ""
        return tail or None

    async def _generate(self, append: list[int], budget: int) -> AsyncIterator[Any]:
        """One model segment: yields TokenEvents, then (terminal event | None, hit_eos)."""
        t0 = time.perf_counter()
        ids: list[int] = []
        detok = Detokenizer(self.backend)
        self.parser.reset()
        event, eos = None, False
        eos_ids = self.backend.eos_ids
        params = self.agent._sampling(budget, self.seq.seed)
        async with contextlib.aclosing(self.backend.stream(self.seq, append, params)) as toks:
            async for tok in toks:
                ids.append(tok)
                if tok in eos_ids:
                    eos = True
                    break
                for ev in self.parser.feed(detok.push(tok)):
                    if isinstance(ev, TextEvent):
                        yield TokenEvent(ev.text)
                    else:
                        event = ev
                if event is not None:
                    break
        if event is None:
            for ev in self.parser.finish():
                if isinstance(ev, TextEvent):
                    yield TokenEvent(ev.text)
                elif eos or isinstance(ev, AnswerEvent):
                    event = ev  # an unclosed call only counts as malformed when the model stopped
        if isinstance(event, MalformedEvent) and event.kind == "unclosed":
            event.close = event.close if eos else ""
        self._add("model", self.backend.decode(ids), ids, t0)
        self.traj.meta["prefilled"] = self.seq.n_prefilled
        yield (event, eos)

    async def _dispatch(self, ev: CallEvent | MalformedEvent) -> tuple[ToolCall | None, list[int]]:
        """Run the call (or report the malformed one) and return the tokens to splice."""
        n_calls = len(self.traj.tool_calls)
        if n_calls >= self.cfg.max_tool_calls:
            if self.limit_warned:
                return None, []
            self.limit_warned = True
            out = ToolOutput(f"error: tool call limit ({self.cfg.max_tool_calls}) reached; give your final "
                             "answer now", error=True)
            call = ToolCall(getattr(ev, "tool", "?"), getattr(ev, "arg", ""), out.text, True, "limit")
        elif isinstance(ev, MalformedEvent):
            call = ToolCall("", ev.raw, ev.error, True, ev.kind)
        else:
            t0 = time.perf_counter()
            out = await self._call_tool(ev.tool, ev.arg)
            call = ToolCall(ev.tool, ev.arg, out.text, out.error, None, time.perf_counter() - t0, out.meta)
        call.result = self._truncate(call.result)
        self.traj.tool_calls.append(call)
        t0 = time.perf_counter()
        prefix = ev.close if isinstance(ev, MalformedEvent) else ""
        text, ids = self._splice_tokens(prefix, call.result)
        self._add("result", text, ids, t0)
        return call, ids

    async def _call_tool(self, name: str, arg: str) -> ToolOutput:
        tool = self.agent.tools[name]
        timeout = tool.timeout_s or self.cfg.tool_timeout_s
        try:
            async with asyncio.timeout(timeout):
                call = self.sessions.get(name)
                if call is None:
                    assert self.stack is not None
                    call = await self.stack.enter_async_context(tool.session())
                    self.sessions[name] = call
                return await call(arg)
        except TimeoutError:
            return ToolOutput(f"error: {name} timed out after {timeout:g} s", error=True, meta={"timed_out": True})
        except Exception as e:  # the runtime never dies because a tool did
            log.warning("tool %s crashed: %r", name, e, exc_info=True)
            self.sessions.pop(name, None)
            return ToolOutput(f"error: {name} failed: {type(e).__name__}: {e}", error=True, meta={"crashed": True})

    def _truncate(self, text: str) -> str:
        return truncate_tokens(text, self.backend.encode, self.backend.decode, self.cfg.max_result_tokens)

    def _splice_tokens(self, prefix: str, result: str) -> tuple[str, list[int]]:
        pieces = self.syntax.splice_pieces(prefix, result, self.agent.tools)
        ids: list[int] = []
        for text, special in pieces:
            if text:
                ids += self.backend.encode(text, special=special)
        return "".join(p for p, _ in pieces), ids


def _load_backend(cfg: RuntimeConfig) -> Backend:
    from agent.backends import load_backend

    return load_backend(cfg)
