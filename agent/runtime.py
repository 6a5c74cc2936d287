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
from collections.abc import AsyncIterator, Callable, Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.backends import BackendConfig, load_backend
from agent.backends.base import Backend, SamplingParams, Sequence, encode_chat
from agent.concurrency import map_bounded
from agent.config import dump_config
from agent.errors import ConfigError, SandboxError
from agent.syntax import (
    PRESETS,
    AnswerEvent,
    CallEvent,
    MalformedEvent,
    StreamParser,
    TextEvent,
    ToolSyntax,
    extract_answer,
    get_syntax,
)
from agent.trajectory import Segment, ToolCall, Trajectory, describe_error, scrub_surrogates
from prompts import message, render
from tools.base import Tool, ToolCallable, ToolOutput, as_output, check_timeout, make_options, truncate_tokens
from tools.registry import get_tools, tool_options_class
from tools.schema import ArgumentError, render_chat, template_accepts_tools

__all__ = ["RuntimeConfig", "Agent", "Conversation", "Event", "TokenEvent", "ToolCallStarted",
           "ToolResultEvent", "DoneEvent", "Detokenizer"]

log = logging.getLogger("splice.runtime")


@dataclass
class RuntimeConfig:
    model: str = field(default="default", metadata={
        "help": "'default' (embedded SmolLM2 with the shipped tool-use adapter), 'base' (the same model "
                "without it), a .gguf file, a HF model dir, a server URL or a served model name"})
    tools: list[str] = field(default_factory=lambda: ["python", "search"],
                             metadata={"help": "tools to enable: names or module:attr import paths"})
    tool_config: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "tool_options": True,
        "help": "options per tool, {name: {option: value}}: each built-in's own dataclass (Tool.options: "
                "SandboxConfig for python, SearchConfig for search); flags --<tool>-<option>"})
    llm: BackendConfig = field(default_factory=BackendConfig, metadata={
        "flatten": True, "help": "how the model is loaded (agent.backends.BackendConfig); flags at top level"})
    syntax: str = field(default="splice", metadata={"help": f"tag syntax: {', '.join(PRESETS)}"})
    system: str = field(default="", metadata={"help": "identity line put first in the system prompt"})
    max_tool_calls: int = field(default=8, metadata={"help": "tool calls per episode before it is stopped"})
    max_new_tokens: int = field(default=512, metadata={"help": "model tokens per episode (tool results excluded)"})
    max_context: int = field(default=0, metadata={"help": "context budget in tokens (0 = the model's context size)"})
    max_result_tokens: int = field(default=256, metadata={"help": "tool output kept per call (head+tail)"})
    tool_timeout_s: float = field(default=10.0, metadata={
        "help": "seconds per tool call (a tool's own timeout_s option, when given, wins)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    seed: int = field(default=0, metadata={"help": "sampling seed (episode i uses seed + i)"})

    def __post_init__(self) -> None:
        tools = self.tools.split(",") if isinstance(self.tools, str) else self.tools
        self.tools = [t.strip() for t in tools if t and t.strip() != "none"]
        if isinstance(self.llm, dict):
            self.llm = BackendConfig(**self.llm)
        get_syntax(self.syntax)
        for name in ("max_new_tokens", "max_result_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.max_tool_calls < 0:
            raise ConfigError(f"max_tool_calls must be >= 0 (got {self.max_tool_calls})")
        check_timeout("tool_timeout_s", self.tool_timeout_s, "--tool-timeout-s 10")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
        for name, opts in self.tool_config.items():
            options = tool_options_class(name)
            if options is not None and opts:
                make_options(options, opts, name)  # unknown keys and bad values fail before a model loads

    def tool_options(self, name: str) -> dict[str, Any]:
        """The keyword options tool ``name`` is built with: ``tool_config[name]``, plus the runtime's
        ``tool_timeout_s`` for a built-in with a ``timeout_s`` option that was not given."""
        opts = dict(self.tool_config.get(name, {}))
        options = tool_options_class(name)
        if options is not None and "timeout_s" in {f.name for f in fields(options)}:
            opts.setdefault("timeout_s", self.tool_timeout_s)
        return opts

    def with_overrides(self, **overrides: Any) -> RuntimeConfig:
        """A copy with fields replaced; ``BackendConfig`` fields (``n_ctx=``, ``n_seq=``...) go to ``llm``."""
        backend_names = {f.name for f in fields(BackendConfig)}
        llm = {k: overrides.pop(k) for k in list(overrides) if k in backend_names}
        if llm:
            overrides["llm"] = replace(overrides.get("llm", self.llm), **llm)
        return replace(self, **overrides)


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
    """A model with tools. ``async with Agent(...) as agent: traj = await agent.run(q)``.

    ``model``, ``tools``, ``syntax`` and keyword overrides replace fields of ``config`` only when given.
    A backend passed in as ``model`` belongs to the caller: ``aclose`` closes only one the Agent loaded.

    Tool failures of every kind (an exception, even ``SystemExit``/``KeyboardInterrupt`` raised by tool
    code, a wrong return type, a timeout) become error results: the model caused them and can react.
    Infrastructure failures raise instead (``SandboxError``: the sandbox cannot start or its engine is
    unreachable), so a broken host stops a run rather than scoring every episode as a tool error.
    A user's Ctrl-C still stops the program: under ``asyncio.run`` (the CLI, ``run_sync``) it arrives
    as cancellation, which is never caught. A timeout cancels an async tool; a sync tool's thread
    cannot be killed and runs on in the tool's own bounded pool of daemon threads (``FunctionTool``),
    which neither blocks other work nor keeps the process alive."""

    def __init__(self, model: str | Backend | None = None, tools: Iterable[str | Tool] | None = None,
                 syntax: str | ToolSyntax | None = None, *, config: RuntimeConfig | None = None, **overrides: Any):
        base = config or RuntimeConfig()
        tool_specs = list(tools) if tools is not None else list(base.tools)
        names = [t for t in tool_specs if isinstance(t, str)]
        cfg_over = dict(overrides)
        if isinstance(model, str):
            cfg_over["model"] = model
        if isinstance(syntax, str):
            cfg_over["syntax"] = syntax
        self.config = base.with_overrides(tools=names, **cfg_over)
        self.syntax = get_syntax(syntax if syntax is not None else self.config.syntax)
        self.tools: dict[str, Tool] = {}  # tools first: a bad tool name fails before a model loads
        for spec in tool_specs:
            for t in get_tools(spec, **(self.config.tool_options(spec) if isinstance(spec, str) else {})):
                check_timeout(f"tool {t.name!r} timeout_s", t.timeout_s, "timeout_s = 10.0 on the Tool")
                self.tools[t.name] = t
        self._stop_pairs = tuple(self.syntax.stop_pairs(self.tools))
        self._owns_backend = not isinstance(model, Backend)
        self.backend = model if isinstance(model, Backend) else _load_backend(self.config)
        self._episode = 0
        # JSON-call syntaxes on a chat template that renders tools itself (apply_chat_template(tools=))
        template = _chat_template(self.backend) if self.syntax.calls.native_template and self.tools else None
        self.template_tools = template if template_accepts_tools(template) else None

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> "Agent":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for t in self.tools.values():
            await t.aclose()
        if self._owns_backend:
            await self.backend.aclose()

    # -- prompt ---------------------------------------------------------------------------------
    def system_prompt(self) -> str:

        docs = []
        for t in self.tools.values() if self.template_tools is None else ():  # else the template lists them
            ex_arg, ex_res = t.examples[0] if t.examples else (t.example_argument(), "")
            docs.append({
                "name": t.name,
                "description": t.prompt_description(),
                "example_call": self.syntax.render_call(t.name, ex_arg, t.arg_name),
                "example_result": self.syntax.render_result(ex_res).strip() if ex_res else "",
            })
        return render("system.j2", tools=docs, identity=self.config.system,
                      answer_open=self.syntax.answer_open, answer_close=self.syntax.answer_close).strip()

    def messages(self, question: str, history: Seq[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """The chat: the system prompt (splice's own text: its tags may be special tokens), the
        history (content never special; ``token_ids`` kept), the question; all UTF-8 safe."""
        turns = [{**m, "content": scrub_surrogates(m["content"])} for m in history]
        return [{"role": "system", "content": self.system_prompt(), "special": True}, *turns,
                {"role": "user", "content": scrub_surrogates(question)}]

    def encode_prompt(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        """The chat prompt as (text, ids): the backend's chat template, given the tool schemas when
        it renders tools itself (``template_tools``)."""
        if self.template_tools is None:
            return self.backend.encode_chat(messages)
        schemas = [{"type": "function", "function": t.schema()} for t in self.tools.values()]
        tok, template = getattr(self.backend, "tokenizer", None), self.template_tools
        if getattr(tok, "chat_template", None) == template and hasattr(tok, "apply_chat_template"):
            def chat(msgs: list[dict[str, Any]]) -> str:  # a HF tokenizer renders its own template
                return tok.apply_chat_template(msgs, tools=schemas, tokenize=False, add_generation_prompt=True)
        else:
            def chat(msgs: list[dict[str, Any]]) -> str:
                return render_chat(template, msgs, schemas, **_special_tokens(self.backend))
        return encode_chat(chat, self.backend.encode, messages)

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
        """One trajectory per question, in order. An episode that raises is recorded in its own slot
        (``Trajectory.failed``: ``stop_reason="error"``, the error in ``meta["error"]``) and the others
        finish; cancellation still cancels them all. A ``SandboxError`` (a broken host) is raised once
        they are done."""
        first_seed = self.config.seed + self._episode
        self._episode += len(questions)

        async def one(item: tuple[int, str]) -> Trajectory:
            return await self.run(item[1], seed=first_seed + item[0])

        out = await map_bounded(one, enumerate(questions), concurrency)
        broken = next((r for r in out if isinstance(r, SandboxError)), None)
        if broken is not None:
            raise broken  # infrastructure: every episode would fail the same way
        return [r if isinstance(r, Trajectory) else self.failed(q, r, first_seed + i)
                for i, (q, r) in enumerate(zip(questions, out))]

    def failed(self, question: str, exc: BaseException, seed: int | None = None) -> Trajectory:
        """The record of an episode that raised (logged with its traceback)."""
        log.warning("episode failed: %s", describe_error(exc), exc_info=exc)
        traj = Trajectory.failed(question, exc, seed=seed)
        traj.model, traj.syntax = self.backend.model_id, self.syntax.name
        return traj

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
        """The turn as history: the assistant message keeps the exact ids it had (sampled text and
        escaped results), so the next prompt re-reads nothing a tool printed as a special token."""
        ids = traj.completion_ids
        while ids and ids[-1] in self.agent.backend.eos_ids:
            ids = ids[:-1]
        self.history += [{"role": "user", "content": message},
                         {"role": "assistant", "content": self.agent.backend.decode(ids), "token_ids": ids}]


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
        self.parser = self._new_parser()
        self.limit_warned = False

    def _new_parser(self) -> StreamParser:
        tools = self.agent.tools
        return StreamParser(self.syntax, list(tools), {n: t.arg_name for n, t in tools.items()},
                            [n for n, t in tools.items() if t.takes_object])

    def _stopper(self) -> Callable[[int], bool]:
        """The stop rule of ``_generate`` as a per-token check for a backend's model thread: a fresh
        parser fed the same tokens stops at the same one (a call, a malformed call, an answer)."""
        parser, detok = self._new_parser(), Detokenizer(self.backend)
        return lambda tok: any(not isinstance(ev, TextEvent) for ev in parser.feed(detok.push(tok)))

    @property
    def context_limit(self) -> int:
        return min(self.cfg.max_context or self.backend.context_size, self.backend.context_size)

    def _add(self, source: str, text: str, ids: list[int], t0: float) -> None:
        self.traj.segments.append(Segment(source, text, ids, t0, time.perf_counter()))

    async def loop(self) -> AsyncIterator[Event]:
        traj = self.traj
        traj.t_start = time.perf_counter()
        prompt, append = self.agent.encode_prompt(self.messages)
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
        n_lp = len(self.seq.logprobs)  # the backend appends one per sampled token
        detok = Detokenizer(self.backend)
        self.parser.reset()
        event, eos = None, False
        eos_ids = self.backend.eos_ids
        params = replace(self.agent._sampling(budget, self.seq.seed), stopper=self._stopper)
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
        lps = self.seq.logprobs[n_lp:n_lp + len(ids)]
        self.traj.segments[-1].logprobs = lps + [float("nan")] * (len(ids) - len(lps))
        if self.seq.n_retokenized:
            self.traj.meta["retokenized"] = self.seq.n_retokenized
        self.traj.meta["prefilled"] = self.seq.n_prefilled
        yield (event, eos)

    async def _dispatch(self, ev: CallEvent | MalformedEvent) -> tuple[ToolCall | None, list[int]]:
        """Run the call (or report the malformed one) and return the tokens to splice."""
        n_calls = len(self.traj.tool_calls)
        if n_calls >= self.cfg.max_tool_calls:
            if self.limit_warned:
                return None, []
            self.limit_warned = True
            out = ToolOutput(message("tool_limit", limit=self.cfg.max_tool_calls), error=True)
            call = ToolCall(getattr(ev, "tool", "?"), getattr(ev, "arg", ""), out.text, True, "limit")
        elif isinstance(ev, MalformedEvent):
            call = ToolCall("", ev.raw, ev.error, True, ev.kind)
        else:
            t0 = time.perf_counter()
            out = await self._call_tool(ev.tool, ev.arg, ev.args)
            call = ToolCall(ev.tool, ev.arg, out.text, out.error, None, time.perf_counter() - t0, out.meta)
        call.arg, call.result = scrub_surrogates(call.arg), self._truncate(scrub_surrogates(call.result))
        self.traj.tool_calls.append(call)
        t0 = time.perf_counter()
        prefix = ev.close if isinstance(ev, MalformedEvent) else ""
        text, ids = self._splice_tokens(prefix, call.result)
        self._add("result", text, ids, t0)
        return call, ids

    async def _call_tool(self, name: str, arg: str, args: Any = None) -> ToolOutput:
        """The tool's result, or an error result: arguments that do not fit its schema, a crash of
        any kind, or the timeout (which wins over a result the tool returned after ignoring its
        cancellation)."""
        tool = self.agent.tools[name]
        try:
            bound = tool.bind(arg, args)
        except ArgumentError as e:
            return tool.argument_error(e)
        timeout = tool.timeout_s or self.cfg.tool_timeout_s
        limit = asyncio.timeout(timeout)
        value: Any = None
        crash: BaseException | None = None
        try:
            async with limit:
                value = await self._session_call(name, tool, bound)
        except SandboxError:
            raise  # infrastructure, not the model's doing: the caller must know (class docstring)
        except (Exception, KeyboardInterrupt, SystemExit) as e:  # the runtime never dies because a tool did
            crash = e
        if limit.expired():
            return ToolOutput(message("timed_out", tool=name, seconds=f"{timeout:g}"), error=True,
                              meta={"timed_out": True})
        if crash is not None:
            log.warning("tool %s crashed: %s", name, describe_error(crash), exc_info=crash)
            self.sessions.pop(name, None)
            return ToolOutput(message("tool_failed", tool=name, error=describe_error(crash)), error=True,
                              meta={"crashed": True})
        return as_output(value, name)

    async def _session_call(self, name: str, tool: Tool, arg: Any) -> Any:
        call = self.sessions.get(name)
        if call is None:
            assert self.stack is not None
            call = await self.stack.enter_async_context(tool.session())
            self.sessions[name] = call
        return await call(arg)

    def _truncate(self, text: str) -> str:
        return truncate_tokens(text, self.backend.encode, self.backend.decode, self.cfg.max_result_tokens)

    def _splice_tokens(self, prefix: str, result: str) -> tuple[str, list[int]]:
        pieces = self.syntax.splice_pieces(prefix, result, self.agent.tools)
        ids: list[int] = []
        for text, special in pieces:
            if text:
                ids += self.backend.encode(text, special=special)
        return "".join(p for p, _ in pieces), ids


def _chat_template(backend: Backend) -> str | None:
    """The backend's jinja2 chat template, where it exposes one (a HF tokenizer, a GGUF's metadata)."""
    for owner in (backend, getattr(backend, "tokenizer", None), getattr(backend, "tok", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str):
            return template
        inner = getattr(owner, "tok", None)  # the openai backend's HFTokenizer
        if isinstance(getattr(inner, "chat_template", None), str):
            return inner.chat_template
        llm = getattr(owner, "llm", None)  # llama.cpp: the GGUF's metadata
        template = getattr(llm, "metadata", {}).get("tokenizer.chat_template") if llm is not None else None
        if isinstance(template, str):
            return template
    return None


def _special_tokens(backend: Backend) -> dict[str, str]:
    tok = getattr(backend, "tokenizer", None)
    return {k: v for k in ("bos_token", "eos_token") if isinstance(v := getattr(tok, k, None), str)}


def _load_backend(cfg: RuntimeConfig) -> Backend:
    return load_backend(cfg.model, cfg.llm, syntax=cfg.syntax, tools=cfg.tools)
