"""The one token grammar: how a model writes tool calls, how results are spliced, how it answers.

A ``ToolSyntax`` describes a convention; presets cover the common ones. Everything that needs tags
(the runtime parser, the system prompt, SFT rendering, GRPO rewards) imports them from here. How a
call is written between the tags is the syntax's ``CallFormat``: ``TAGGED`` (one tag pair per tool,
the argument as the body) or ``JSON`` (one tag pair, ``{"name": ..., "arguments": {...}}`` inside).
A new syntax is one more ``PRESETS`` entry; a new call format is one more ``CallFormat`` subclass.

``StreamParser`` reads model text incrementally (tags may be split across tokens) and reports the
first complete event: a tool call, a malformed call, or a final answer. It only ever sees text the
model sampled, never spliced tool output, and tool output is escaped before splicing
(``ToolSyntax.escape``) so a web page printing ``<code_start>`` cannot forge a call on a re-parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.errors import ConfigError
from agent.trajectory import scrub_surrogates
from prompts import message

__all__ = [
    "CallFormat",
    "JsonCalls",
    "Open",
    "TaggedCalls",
    "JSON",
    "TAGGED",
    "ToolSyntax",
    "PRESETS",
    "get_syntax",
    "StreamParser",
    "TextEvent",
    "CallEvent",
    "MalformedEvent",
    "AnswerEvent",
    "ParseEvent",
    "extract_answer",
    "ZWSP",
]

ZWSP = "\u200b"  # inserted into tags found inside tool output so they no longer match


@dataclass(frozen=True)
class Open:
    """What an opening tag starts: the ``answer``, a ``call`` of ``tool`` (None: a JSON call, whose
    body names its tool), or an ``unknown`` call-shaped tag with tag word ``word``."""

    kind: str  # "answer" | "call" | "unknown"
    tool: str | None = None
    word: str = ""


@dataclass(frozen=True)
class CallFormat:
    """How a call is written between a syntax's tags: the tags that delimit calls, how a call is
    rendered, and how a closed call body becomes an event. Subclasses: ``TaggedCalls``, ``JsonCalls``."""

    name: str = ""
    # call-shaped tags of tools that are not enabled are recognised (and escaped in tool output)
    generic_tags: bool = False
    # the model's own chat template renders the tool schemas (apply_chat_template(tools=...))
    native_template: bool = False

    def call_tags(self, s: ToolSyntax, tools: Iterable[str]) -> list[tuple[str, str]]:
        """(open, close) literal tag pairs of calls."""
        raise NotImplementedError

    def opens(self, s: ToolSyntax, tools: Iterable[str]) -> dict[str, Open]:
        """Literal opening tag -> what it starts, for the calls of ``tools``."""
        raise NotImplementedError

    def open_tag(self, s: ToolSyntax, tool: str) -> str:
        """The tag a call of ``tool`` starts with."""
        raise NotImplementedError

    def close_for(self, s: ToolSyntax, op: Open) -> str:
        raise NotImplementedError

    def distinct_closes(self, s: ToolSyntax, tools: Iterable[str]) -> list[str]:
        """Close tags of other calls that may wrongly end a call (``wrong_close``)."""
        return []

    def render(self, s: ToolSyntax, tool: str, arg: str | dict, arg_name: str) -> str:
        raise NotImplementedError

    def complete(self, p: StreamParser, op: Open, body: str, raw: str) -> ParseEvent:
        """The event of a closed call (``op`` is a call or unknown opening)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TaggedCalls(CallFormat):
    """One tag pair per tool around the argument: ``<code_start>print(1)<code_end>``."""

    name: str = "tagged"
    generic_tags: bool = True

    def call_tags(self, s: ToolSyntax, tools: Iterable[str]) -> list[tuple[str, str]]:
        return [(s.open_tag(t), s.close_tag(t)) for t in tools]

    def opens(self, s: ToolSyntax, tools: Iterable[str]) -> dict[str, Open]:
        return {s.open_tag(t): Open("call", t) for t in tools}

    def open_tag(self, s: ToolSyntax, tool: str) -> str:
        return s.open_tag(tool)

    def close_for(self, s: ToolSyntax, op: Open) -> str:
        return s.call_close.format(tag=op.word) if op.kind == "unknown" else s.close_tag(op.tool or "")

    def distinct_closes(self, s: ToolSyntax, tools: Iterable[str]) -> list[str]:
        return [s.close_tag(t) for t in tools]

    def render(self, s: ToolSyntax, tool: str, arg: str | dict, arg_name: str) -> str:
        if isinstance(arg, dict):
            arg = json.dumps(arg, ensure_ascii=False)
        sep = "\n" if s.call_open.endswith("\n") and not arg.endswith("\n") else ""
        return f"{s.open_tag(tool)}{arg}{sep}{s.close_tag(tool)}"

    def complete(self, p: StreamParser, op: Open, body: str, raw: str) -> ParseEvent:
        if op.kind == "unknown" or op.tool is None:
            return MalformedEvent(p.unknown_message(op.word), raw, "unknown_tool")
        if not body.strip():
            return MalformedEvent(message("empty_call", tool=op.tool, what=p.arg_names.get(op.tool, "input")), raw,
                                  "empty")
        return CallEvent(op.tool, _strip_arg(body), raw)


@dataclass(frozen=True)
class JsonCalls(CallFormat):
    """One tag pair for every call, a JSON object inside: ``<tool_call>{"name": ..., "arguments":
    {...}}</tool_call>`` (Hermes/Qwen)."""

    name: str = "json"
    native_template: bool = True

    def call_tags(self, s: ToolSyntax, tools: Iterable[str]) -> list[tuple[str, str]]:
        return [(s.call_open, s.call_close)]

    def opens(self, s: ToolSyntax, tools: Iterable[str]) -> dict[str, Open]:
        return {s.call_open: Open("call", None)}

    def open_tag(self, s: ToolSyntax, tool: str) -> str:
        return s.call_open

    def close_for(self, s: ToolSyntax, op: Open) -> str:
        return s.call_close

    def render(self, s: ToolSyntax, tool: str, arg: str | dict, arg_name: str) -> str:
        args = arg if isinstance(arg, dict) else {arg_name: arg}
        body = json.dumps({"name": tool, "arguments": args}, ensure_ascii=False)
        return f"{s.call_open}{body}{s.call_close}"

    def complete(self, p: StreamParser, op: Open, body: str, raw: str) -> ParseEvent:
        try:
            obj = json.loads(body)
            name = obj["name"]
            args = obj.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args)
        except RecursionError:
            return MalformedEvent(message("json_too_deep"), raw, "bad_json")
        except (ValueError, KeyError, TypeError) as e:
            return MalformedEvent(message("bad_json", error=f"{type(e).__name__}: {e}"), raw, "bad_json")
        if name not in p.tools:
            return MalformedEvent(p.unknown_message(str(name)), raw, "unknown_tool")
        if name in p.object_tools:  # the tool checks the arguments against its schema
            text = scrub_surrogates(json.dumps(args, ensure_ascii=False))
            return CallEvent(name, text, raw, json.loads(text))
        key = p.arg_names.get(name, "input")
        if isinstance(args, dict):
            arg = args.get(key, next(iter(args.values()), "") if len(args) == 1 else "")
        else:
            arg = str(args)
        if not str(arg).strip():
            return MalformedEvent(message("empty_json_call", tool=name, key=key), raw, "empty")
        return CallEvent(name, scrub_surrogates(str(arg)), raw)  # JSON escapes can spell lone surrogates


ANSWER = Open("answer")
TAGGED: CallFormat = TaggedCalls()
JSON: CallFormat = JsonCalls()


@dataclass(frozen=True)
class ToolSyntax:
    """A tag convention. ``call_open``/``call_close`` are templates with ``{tag}``; ``tag_names`` maps
    a tool name to the tag word it uses (the default is the tool name itself). ``calls`` is how a
    call is written between the tags (``TAGGED``, or ``JSON``: one fixed pair of tags around
    ``{"name": ..., "arguments": {...}}``)."""

    name: str
    call_open: str
    call_close: str
    result_open: str
    result_close: str
    answer_open: str
    answer_close: str
    tag_names: dict[str, str] = field(default_factory=dict)
    calls: CallFormat = TAGGED
    special_tokens: bool = False  # tags are meant to be single special tokens (nanochat style)
    # a call-shaped tag of a tool that is not enabled is a malformed call (True) or plain text (False:
    # conventions whose models write other tags or fences as text, e.g. Search-R1's <think>)
    unknown_calls: bool = True
    description: str = ""

    # -- tags -------------------------------------------------------------------------------
    def tag_word(self, tool: str) -> str:
        return self.tag_names.get(tool, tool)

    def open_tag(self, tool: str) -> str:
        return self.call_open.format(tag=self.tag_word(tool))

    def close_tag(self, tool: str) -> str:
        return self.call_close.format(tag=self.tag_word(tool))

    def tool_for_word(self, word: str, tools: Iterable[str]) -> str | None:
        for t in tools:
            if self.tag_word(t) == word:
                return t
        return word if word not in self.tag_names.values() else None

    def all_tags(self, tools: Iterable[str]) -> list[str]:
        """Every literal tag of this syntax for these tools (for special tokens and escaping)."""
        tags = [self.result_open, self.result_close, self.answer_open, self.answer_close]
        for pair in self.calls.call_tags(self, tools):
            tags += pair
        out: list[str] = []
        for t in tags:
            if t and t not in out:
                out.append(t)
        return out

    def stop_pairs(self, tools: Iterable[str]) -> list[tuple[str, str]]:
        """(open, close) pairs whose close tag ends a model segment: tool calls and the answer."""
        pairs = self.calls.call_tags(self, tools)
        pairs.append((self.answer_open, self.answer_close))
        return [p for i, p in enumerate(pairs) if p[1] and p not in pairs[:i]]

    # -- rendering --------------------------------------------------------------------------
    def render_call(self, tool: str, arg: str | dict, arg_name: str = "input") -> str:
        """A call as the model writes it. ``arg`` is the string of a one-string tool, or the
        argument object of a typed tool (JSON-call syntaxes put it in ``"arguments"``, tag syntaxes
        write it as JSON between the tags)."""
        return self.calls.render(self, tool, arg, arg_name)

    def render_result(self, text: str, tools: Iterable[str] = ()) -> str:
        return f"{self.result_open}{self.escape(text, tools)}{self.result_close}"

    def render_answer(self, answer: str) -> str:
        return f"{self.answer_open}{answer}{self.answer_close}"

    def splice_pieces(self, prefix: str, result: str, tools: Iterable[str] = ()) -> list[tuple[str, bool]]:
        """The text spliced after a call as (text, is_tag) pieces: tags are encoded with special
        tokens allowed, the escaped tool output never. The runtime and SFT rendering both use this."""
        body = self.escape(result, tools)
        return [(prefix, True), ("\n", False), (self.result_open, True),
                ("" if self.result_open.endswith("\n") else "\n", False), (body, False), ("\n", False),
                (self.result_close, True), ("" if self.result_close.endswith("\n") else "\n", False)]

    def escape(self, text: str, tools: Iterable[str] = ()) -> str:
        """Neutralise every tag of this syntax (and any ``{tag}``-shaped tag) inside tool output."""
        tags = sorted((t for t in set(self.all_tags(tools)) if len(t) > 1 and t.strip()), key=len, reverse=True)
        while any(t in text for t in tags):  # to a fixpoint: adjacent tags can re-form one
            for t in tags:
                text = text.replace(t, t[0] + ZWSP + t[1:])
        if self.calls.generic_tags:
            text = self._generic_open_re().sub(lambda m: m.group(0)[0] + ZWSP + m.group(0)[1:], text)
        return text

    def _generic_open_re(self) -> re.Pattern[str]:
        pre, _, post = self.call_open.partition("{tag}")
        return re.compile(re.escape(pre) + r"([A-Za-z][A-Za-z0-9_\-]{0,31})" + re.escape(post))


_SPLICE = ToolSyntax(
    name="splice",
    call_open="<{tag}_start>",
    call_close="<{tag}_end>",
    result_open="<result_start>",
    result_close="<result_end>",
    answer_open="<answer_start>",
    answer_close="<answer_end>",
    tag_names={"python": "code"},
    description="splice's own tags: <search_start>q<search_end>, <code_start>src<code_end>",
)

PRESETS: dict[str, ToolSyntax] = {
    "splice": _SPLICE,
    "search-r1": ToolSyntax(
        name="search-r1",
        call_open="<{tag}>",
        call_close="</{tag}>",
        result_open="<information>",
        result_close="</information>",
        answer_open="<answer>",
        answer_close="</answer>",
        unknown_calls=False,  # <think>...</think> is the model's reasoning, not a call
        description="Search-R1: <search>q</search>, results in <information>, <answer>a</answer>",
    ),
    "nanochat": ToolSyntax(
        name="nanochat",
        call_open="<|{tag}_start|>",
        call_close="<|{tag}_end|>",
        result_open="<|output_start|>",
        result_close="<|output_end|>",
        answer_open="<|answer_start|>",
        answer_close="<|answer_end|>",
        special_tokens=True,
        description="nanochat special tokens: <|python_start|>src<|python_end|>, <|output_start|>",
    ),
    "tora": ToolSyntax(
        name="tora",
        call_open="```{tag}\n",
        call_close="```",
        result_open="```output\n",
        result_close="```\n",
        answer_open="\\boxed{",
        answer_close="}",
        unknown_calls=False,  # ```json, ```text ... fences are text
        description="ToRA fences: ```python ... ``` then ```output ... ```, answer in \\boxed{}",
    ),
    "hermes": ToolSyntax(
        name="hermes",
        call_open="<tool_call>",
        call_close="</tool_call>",
        result_open="<tool_response>",
        result_close="</tool_response>",
        answer_open="<answer>",
        answer_close="</answer>",
        calls=JSON,
        description='Hermes/Qwen JSON calls: <tool_call>{"name": ..., "arguments": {...}}</tool_call>',
    ),
}


def get_syntax(spec: str | ToolSyntax) -> ToolSyntax:
    if isinstance(spec, ToolSyntax):
        return spec
    try:
        return PRESETS[spec]
    except KeyError:
        raise ConfigError(f"unknown syntax {spec!r}; choose one of: {', '.join(PRESETS)}") from None


# -- events -----------------------------------------------------------------------------------
@dataclass
class TextEvent:
    text: str


@dataclass
class CallEvent:
    tool: str
    arg: str  # the argument string (a typed tool's JSON arguments, as JSON text)
    raw: str  # the whole call as written, tags included
    args: object = None  # JSON-call syntaxes: the "arguments" value as parsed (the tool checks it)


@dataclass
class MalformedEvent:
    """A call the runtime cannot run. ``error`` is the text spliced back for the model."""

    error: str
    raw: str
    kind: str  # "unclosed" | "empty" | "unknown_tool" | "nested" | "wrong_close" | "bad_json"
    close: str = ""  # text to splice to close the broken call before the result, if any


@dataclass
class AnswerEvent:
    answer: str
    raw: str


ParseEvent = TextEvent | CallEvent | MalformedEvent | AnswerEvent


class StreamParser:
    """Incremental parser over model text. ``feed`` returns the events completed so far; after a
    terminal event (call, malformed, answer) the parser stops accepting text until ``reset``."""

    def __init__(self, syntax: ToolSyntax, tools: Iterable[str], arg_names: dict[str, str] | None = None,
                 object_tools: Iterable[str] = ()):
        self.syntax = syntax
        self.tools = list(tools)
        self.arg_names = arg_names or {}
        self.object_tools = set(object_tools)  # typed tools: JSON arguments go to the tool whole
        self._opens = self._build_opens()
        self._max_open = max(len(o) for o in self._opens) if self._opens else 1
        self._first_chars = {o[0] for o in self._opens if o} | {syntax.call_open[0]}
        generic = syntax.calls.generic_tags and syntax.unknown_calls
        self._generic = syntax._generic_open_re() if generic else None
        self._closes = syntax.calls.distinct_closes(syntax, self.tools)
        self.reset()

    def _build_opens(self) -> dict[str, Open]:
        """Literal opening tag -> what it starts (the answer, or a call)."""
        s = self.syntax
        return {s.answer_open: ANSWER, **s.calls.opens(s, self.tools)}

    def reset(self) -> None:
        self.buf = ""
        self.inside: str | None = None  # the open tag we are inside
        self._opened: Open | None = None  # what that tag opened
        self.done = False

    # -- public -----------------------------------------------------------------------------
    def feed(self, text: str) -> list[ParseEvent]:
        if self.done:
            raise RuntimeError("parser already produced a terminal event; call reset()")
        self.buf += text
        return self._scan(final=False)

    def finish(self) -> list[ParseEvent]:
        """End of stream (EOS): flush text, report an unclosed call."""
        if self.done:
            return []
        return self._scan(final=True)

    # -- scanning ---------------------------------------------------------------------------
    def _scan(self, final: bool) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        while not self.done:
            if self.inside is None:
                if not self._scan_outside(events, final):
                    break
            elif not self._scan_inside(events, final):
                break
        return events

    def _find_open(self) -> tuple[int, str, Open | None]:
        """Earliest opening tag in buf: (pos, tag, what it opens) or (-1, '', None)."""
        best: tuple[int, str, Open | None] = (-1, "", None)
        for tag, op in self._opens.items():
            i = self.buf.find(tag)
            if i >= 0 and (best[0] < 0 or i < best[0] or (i == best[0] and len(tag) > len(best[1]))):
                best = (i, tag, op)
        if self._generic is not None:
            m = self._generic.search(self.buf)
            if m and (best[0] < 0 or m.start() < best[0]):
                word = m.group(1)
                tool = self.syntax.tool_for_word(word, self.tools)
                best = (m.start(), m.group(0), Open("call", tool) if tool in self.tools else Open("unknown", word=word))
        return best

    def _holdback(self) -> int:
        """How many trailing chars might start a tag and must wait for more text."""
        buf = self.buf
        for i in range(max(0, len(buf) - self._max_open - 40), len(buf)):
            if buf[i] not in self._first_chars:
                continue
            tail = buf[i:]
            if any(tag.startswith(tail) for tag in self._opens):
                return len(buf) - i
            if self._generic is not None and self._could_be_generic(tail):
                return len(buf) - i
        return 0

    def _could_be_generic(self, tail: str) -> bool:
        pre, _, post = self.syntax.call_open.partition("{tag}")
        if len(tail) <= len(pre):
            return pre.startswith(tail)
        if not tail.startswith(pre):
            return False
        rest = tail[len(pre):]
        word = re.match(r"[A-Za-z0-9_\-]*", rest).group(0)  # type: ignore[union-attr]
        after = rest[len(word):]
        return len(word) <= 32 and post.startswith(after) and after != post

    def _scan_outside(self, events: list[ParseEvent], final: bool) -> bool:
        pos, tag, op = self._find_open()
        if pos < 0:
            keep = 0 if final else self._holdback()
            text = self.buf[: len(self.buf) - keep]
            if text:
                events.append(TextEvent(text))
            self.buf = self.buf[len(text):]
            if final and self.buf:
                events.append(TextEvent(self.buf))
                self.buf = ""
            return False
        if pos > 0:
            events.append(TextEvent(self.buf[:pos]))
        self.buf = self.buf[pos:]
        self.inside = tag
        self._opened = op
        return True

    def _close_for(self, op: Open) -> str:
        return self.syntax.answer_close if op is ANSWER else self.syntax.calls.close_for(self.syntax, op)

    def _scan_inside(self, events: list[ParseEvent], final: bool) -> bool:
        tag, op = self.inside or "", self._opened
        close = self._close_for(op)
        body_start = len(tag)
        ci = self.buf.find(close, body_start)
        nested = self._nested_open(body_start, ci)
        wrong = self._wrong_close(body_start, ci, close)
        if wrong is not None and (nested is None or wrong[0] < nested):
            pos, bad = wrong
            raw, self.buf = self.buf[:pos + len(bad)], self.buf[pos + len(bad):]
            self._terminal(events, MalformedEvent(
                message("wrong_close", tag=tag.strip(), bad=bad, close=close.strip()), raw, "wrong_close"))
            return False
        if nested is not None:
            raw = self.buf[:nested]
            self._terminal(events, MalformedEvent(
                message("nested_open", tag=tag.strip(), close=close.strip()), raw, "nested", close))
            return False
        if ci < 0:
            if final:
                raw = self.buf
                if op is ANSWER:
                    self._terminal(events, AnswerEvent(raw[body_start:].strip(), raw))
                else:
                    self._terminal(events, MalformedEvent(
                        message("unclosed", close=close.strip()), raw, "unclosed", close))
            return False
        raw = self.buf[: ci + len(close)]
        body = self.buf[body_start:ci]
        self.buf = self.buf[ci + len(close):]
        event = AnswerEvent(body.strip(), raw) if op is ANSWER else self.syntax.calls.complete(self, op, body, raw)
        self._terminal(events, event)
        return False

    def _nested_open(self, start: int, close_at: int) -> int | None:
        """Position of an opening tag inside the current call body (before its close), if any."""
        if self._opened is ANSWER:
            return None
        end = close_at if close_at >= 0 else len(self.buf)
        body = self.buf[start:end]
        hits = [body.find(t) for t in self._opens if t and body.find(t) >= 0]
        return start + min(hits) if hits else None

    def _wrong_close(self, start: int, close_at: int, close: str) -> tuple[int, str] | None:
        """(position, tag) of another tool's close tag inside the current call body, if any."""
        if self._opened is ANSWER:
            return None
        body = self.buf[start:close_at if close_at >= 0 else len(self.buf)]
        hits = [(body.find(t), t) for t in self._closes if t != close and t in body]
        return (start + min(hits)[0], min(hits)[1]) if hits else None

    def unknown_message(self, word: str) -> str:
        """The notice for a call of a tool that is not enabled (for ``CallFormat.complete``)."""
        avail = ", ".join(self.tools) or "none"
        return message("unknown_tool", word=repr(word), available=avail)

    def _terminal(self, events: list[ParseEvent], ev: ParseEvent) -> None:
        events.append(ev)
        self.done = True
        self.inside = None


def _strip_arg(body: str) -> str:
    """Call bodies lose surrounding blank lines and a wrapping ```python fence, nothing else."""
    s = body.strip("\n")
    m = re.fullmatch(r"\s*```[A-Za-z0-9_]*\n(.*?)\n?```\s*", s, re.S)
    return (m.group(1) if m else s).strip("\n") if s.strip() else s


def extract_answer(text: str, syntax: ToolSyntax) -> str | None:
    """The last final answer in ``text`` (answer tags), or None."""
    s = syntax
    end = text.rfind(s.answer_close)
    while end >= 0:
        start = text.rfind(s.answer_open, 0, end)
        if start >= 0:
            return text[start + len(s.answer_open): end].strip()
        end = text.rfind(s.answer_close, 0, end)
    i = text.rfind(s.answer_open)
    return text[i + len(s.answer_open):].strip() if i >= 0 else None
