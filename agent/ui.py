"""Terminal rendering of a live episode (rich): model text, tool calls and results set apart.

Everything shown comes from a model or a tool, so it goes through ``inert`` first: terminal control
codes (clear screen, window title, OSC 52 clipboard writes, concealed text, C1 controls, bidi
overrides) are written out as visible escapes instead of reaching the terminal.
"""

from __future__ import annotations

import asyncio
import re
import sys

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from agent.runtime import DoneEvent, Event, TokenEvent, ToolCallStarted, ToolResultEvent
from agent.trajectory import Trajectory

__all__ = ["LivePrinter", "read_line", "inert", "shown"]

# C0 controls but \t and \n, DEL, C1 controls, and the bidi embedding/override/isolate characters
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def inert(text: str) -> str:
    """``text`` safe to print on a terminal: each control character becomes a visible escape
    (``\\x1b``, ``\\u202e``); newlines and tabs stay (``\\r\\n`` becomes ``\\n``)."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text.replace("\r\n", "\n"))


def shown(text: str) -> str:
    """Model or tool text as rich markup: inert, and rich's own markup escaped."""
    return escape(inert(text))


class LivePrinter:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.trajectory: Trajectory | None = None

    def handle(self, ev: Event) -> None:
        if isinstance(ev, DoneEvent):
            self.trajectory = ev.trajectory
        if self.quiet:
            return
        c = self.console
        if isinstance(ev, TokenEvent):
            c.print(shown(ev.text), end="", style="white", soft_wrap=True)
        elif isinstance(ev, ToolCallStarted):
            c.print()
            c.print(Panel(shown(ev.arg), title=f"[bold cyan]{shown(ev.tool)}[/] call", border_style="cyan",
                          expand=False))
        elif isinstance(ev, ToolResultEvent):
            call = ev.call
            style = "red" if call.error else "green"
            title = f"[bold {style}]{shown(call.tool or 'runtime')}[/] result ({call.duration_s * 1000:.0f} ms)"
            c.print(Panel(shown(call.result), title=title, border_style=style, expand=False))
        elif isinstance(ev, DoneEvent):
            t = ev.trajectory
            c.print()
            tagged = t.answer and t.stop_reason == "answer"  # untagged text was already shown as it streamed
            answer = f"answer: [bold]{shown(' '.join(t.answer.split())[:200])}[/]  " if tagged else ""
            c.print(f"[dim]── {answer}tool calls: {len(t.tool_calls)}  tokens: {t.n_generated}  "
                    f"seconds: {t.seconds:.2f}  stop: {t.stop_reason}[/]")


class NotUTF8(ValueError):
    """A line of input that is not valid UTF-8 (the REPL says so and reads the next line)."""


async def read_line(prompt: str) -> str | None:
    """input() without blocking the event loop; None at end of input; ``NotUTF8`` for a line that
    cannot be decoded (the line is consumed, nothing else is lost)."""
    def _read() -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None

    if not sys.stdin.isatty():
        raw = await asyncio.to_thread(sys.stdin.buffer.readline)
        if not raw:
            return None
        try:
            return raw.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError as e:
            raise NotUTF8(f"that line is not valid UTF-8 (byte {e.start}); nothing was sent") from None
    return await asyncio.to_thread(_read)
