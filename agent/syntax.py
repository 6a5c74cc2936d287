"""The one token grammar: how a model writes tool calls, how results are spliced, how it answers.

A ``ToolSyntax`` describes a convention; presets cover the common ones. Everything that needs tags
(the runtime parser, the system prompt, SFT rendering, GRPO rewards) imports them from here.

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

__all__ = [
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
class ToolSyntax:
    """A tag convention. ``call_open``/``call_close`` are templates with ``{tag}``; ``tag_names`` maps
    a tool name to the tag word it uses (the default is the tool name itself). JSON syntaxes
    (``json_calls=True``) use one fixed pair of tags around ``{"name": ..., "arguments": {...}}``."""

    name: str
    call_open: str
    call_close: str
    result_open: str
    result_close: str
    answer_open: str
    answer_close: str
    tag_names: dict[str, str] = field(default_factory=dict)
    json_calls: bool = False
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
        if self.json_calls:
            tags += [self.call_open, self.call_close]
        else:
            for t in tools:
                tags += [self.open_tag(t), self.close_tag(t)]
        out: list[str] = []
        for t in tags:
            if t and t not in out:
                out.append(t)
        return out

    def stop_pairs(self, tools: Iterable[str]) -> list[tuple[str, str]]:
        """(open, close) pairs whose close tag ends a model segment: tool calls and the answer."""
        pairs = [(self.call_open, self.call_close)] if self.json_calls else \
            [(self.open_tag(t), self.close_tag(t)) for t in tools]
        pairs.append((self.answer_open, self.answer_close))
        return [p for i, p in enumerate(pairs) if p[1] and p not in pairs[:i]]

    # -- rendering --------------------------------------------------------------------------
    def render_call(self, tool: str, arg: str | dict, arg_name: str = "input") -> str:
        """A call as the model writes it. ``arg`` is the string of a one-string tool, or the
        argument object of a typed tool (JSON-call syntaxes put it in ``"arguments"``, tag syntaxes
        write it as JSON between the tags)."""
        if self.json_calls:
            args = arg if isinstance(arg, dict) else {arg_name: arg}
            body = json.dumps({"name": tool, "arguments": args}, ensure_ascii=False)
            return f"{self.call_open}{body}{self.call_close}"
        if isinstance(arg, dict):
            arg = json.dumps(arg, ensure_ascii=False)
        sep = "\n" if self.call_open.endswith("\n") and not arg.endswith("\n") else ""
        return f"{self.open_tag(tool)}{arg}{sep}{self.close_tag(tool)}"

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
        if not self.json_calls:
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
        json_calls=True,
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
        self._generic = None if syntax.json_calls or not syntax.unknown_calls else syntax._generic_open_re()
        self._closes = [] if syntax.json_calls else [syntax.close_tag(t) for t in self.tools]
        self.reset()

    def _build_opens(self) -> dict[str, str]:
        """Literal opening tag -> tool name ('' for the JSON call tag, '\\0answer' for answers)."""
        s = self.syntax
        opens = {s.answer_open: "\0answer"}
        if s.json_calls:
            opens[s.call_open] = ""
        else:
            for t in self.tools:
                opens[s.open_tag(t)] = t
        return opens

    def reset(self) -> None:
        self.buf = ""
        self.inside: str | None = None  # the open tag we are inside
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

    def _find_open(self) -> tuple[int, str, str | None]:
        """Earliest opening tag in buf: (pos, tag, tool) or (-1, '', None)."""
        best = (-1, "", None)
        for tag, tool in self._opens.items():
            i = self.buf.find(tag)
            if i >= 0 and (best[0] < 0 or i < best[0] or (i == best[0] and len(tag) > len(best[1]))):
                best = (i, tag, tool)
        if self._generic is not None:
            m = self._generic.search(self.buf)
            if m and (best[0] < 0 or m.start() < best[0]):
                word = m.group(1)
                tool = self.syntax.tool_for_word(word, self.tools)
                best = (m.start(), m.group(0), tool if tool in self.tools else "\0unknown:" + word)
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
        pos, tag, tool = self._find_open()
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
        self._inside_tool = tool
        return True

    def _close_for(self, tool: str | None) -> str:
        s = self.syntax
        if tool == "\0answer":
            return s.answer_close
        if s.json_calls:
            return s.call_close
        if tool and tool.startswith("\0unknown:"):
            return s.call_close.format(tag=tool.split(":", 1)[1])
        return s.close_tag(tool or "")

    def _scan_inside(self, events: list[ParseEvent], final: bool) -> bool:
        tag, tool = self.inside or "", self._inside_tool
        close = self._close_for(tool)
        body_start = len(tag)
        ci = self.buf.find(close, body_start)
        nested = self._nested_open(body_start, ci)
        wrong = self._wrong_close(body_start, ci, close)
        if wrong is not None and (nested is None or wrong[0] < nested):
            pos, bad = wrong
            raw, self.buf = self.buf[:pos + len(bad)], self.buf[pos + len(bad):]
            self._terminal(events, MalformedEvent(
                f"error: {tag.strip()} was closed with {bad}; close it with {close.strip()}", raw, "wrong_close"))
            return False
        if nested is not None:
            raw = self.buf[:nested]
            self._terminal(events, MalformedEvent(
                f"error: a new tag was opened inside {tag.strip()} before it was closed with "
                f"{close.strip()}; close each call before opening another", raw, "nested", close))
            return False
        if ci < 0:
            if final:
                raw = self.buf
                if tool == "\0answer":
                    self._terminal(events, AnswerEvent(raw[body_start:].strip(), raw))
                else:
                    self._terminal(events, MalformedEvent(
                        f"error: the call was not closed; end it with {close.strip()}", raw, "unclosed", close))
            return False
        raw = self.buf[: ci + len(close)]
        body = self.buf[body_start:ci]
        self.buf = self.buf[ci + len(close):]
        self._terminal(events, self._complete(tool, body, raw))
        return False

    def _nested_open(self, start: int, close_at: int) -> int | None:
        """Position of an opening tag inside the current call body (before its close), if any."""
        if self._inside_tool == "\0answer":
            return None
        end = close_at if close_at >= 0 else len(self.buf)
        body = self.buf[start:end]
        hits = [body.find(t) for t in self._opens if t and body.find(t) >= 0]
        if self.syntax.json_calls and self.syntax.call_open in body:
            hits.append(body.find(self.syntax.call_open))
        return start + min(hits) if hits else None

    def _wrong_close(self, start: int, close_at: int, close: str) -> tuple[int, str] | None:
        """(position, tag) of another tool's close tag inside the current call body, if any."""
        if self._inside_tool == "\0answer":
            return None
        body = self.buf[start:close_at if close_at >= 0 else len(self.buf)]
        hits = [(body.find(t), t) for t in self._closes if t != close and t in body]
        return (start + min(hits)[0], min(hits)[1]) if hits else None

    def _complete(self, tool: str | None, body: str, raw: str) -> ParseEvent:
        if tool == "\0answer":
            return AnswerEvent(body.strip(), raw)
        if self.syntax.json_calls:
            return self._complete_json(body, raw)
        if tool is None or tool.startswith("\0unknown:"):
            word = (tool or "").split(":", 1)[-1]
            return MalformedEvent(self._unknown_msg(word), raw, "unknown_tool")
        if not body.strip():
            return MalformedEvent(f"error: empty {tool} call; put the {self.arg_names.get(tool, 'input')} "
                                  "between the tags", raw, "empty")
        return CallEvent(tool, _strip_arg(body), raw)

    def _complete_json(self, body: str, raw: str) -> ParseEvent:
        try:
            obj = json.loads(body)
            name = obj["name"]
            args = obj.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args)
        except RecursionError:
            return MalformedEvent('error: the tool call JSON is nested too deeply; write {"name": ..., '
                                  '"arguments": {...}} with a plain string argument', raw, "bad_json")
        except (ValueError, KeyError, TypeError) as e:
            return MalformedEvent(f'error: the tool call is not valid JSON {{"name": ..., "arguments": {{...}}}} '
                                  f"({type(e).__name__}: {e})", raw, "bad_json")
        if name not in self.tools:
            return MalformedEvent(self._unknown_msg(str(name)), raw, "unknown_tool")
        if name in self.object_tools:  # the tool checks the arguments against its schema
            text = scrub_surrogates(json.dumps(args, ensure_ascii=False))
            return CallEvent(name, text, raw, json.loads(text))
        key = self.arg_names.get(name, "input")
        if isinstance(args, dict):
            arg = args.get(key, next(iter(args.values()), "") if len(args) == 1 else "")
        else:
            arg = str(args)
        if not str(arg).strip():
            return MalformedEvent(f'error: empty {name} call; pass {{"{key}": ...}} in "arguments"', raw, "empty")
        return CallEvent(name, scrub_surrogates(str(arg)), raw)  # JSON escapes can spell lone surrogates

    def _unknown_msg(self, word: str) -> str:
        avail = ", ".join(self.tools) or "none"
        return f"error: unknown tool {word!r}; available tools: {avail}"

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
