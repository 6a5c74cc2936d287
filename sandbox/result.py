"""What one execution returns, and the short text the model reads."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

__all__ = ["ExecResult"]

NO_OUTPUT = "(no output)"
TRUNCATED = "\n[... output truncated: {cut} bytes cut ...]\n"
STATE_LOST = "the sandbox was restarted: variables, imports and files from earlier calls are lost"
PROTOCOL_BROKEN = "the sandbox's result channel was tampered with ({why})"
MAX_ERROR_CHARS = 8000
SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass
class ExecResult:
    """The outcome of ``Sandbox.run``. ``error`` is None on success, else a short description
    (exception type + message + last traceback lines, or "timed out after 5 s", ...)."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    truncated: bool = False
    restarted: bool = False  # the worker was killed and replaced: session state is gone

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_text(self) -> str:
        """Model-facing text: stdout, then stderr, then the error."""
        parts = [p.rstrip("\n") for p in (self.stdout, self.stderr, self.error) if p and p.strip()]
        return "\n".join(parts) if parts else NO_OUTPUT

    @classmethod
    def from_worker(cls, raw: dict[str, Any], duration_s: float, max_chars: int) -> ExecResult:
        """Build from a worker frame. The frame is untrusted data (user code can forge it): coerce
        every field, cap stdout and stderr at ``max_chars`` here on the host, and replace lone
        surrogates, so the text always encodes as UTF-8."""
        out, out_cut = _stream(raw.get("stdout"), max_chars)
        err, err_cut = _stream(raw.get("stderr"), max_chars)
        error = raw.get("error")
        return cls(stdout=out, stderr=err, error=None if error is None else _clean(error)[:MAX_ERROR_CHARS],
                   timed_out=raw.get("timed_out") is True, duration_s=duration_s,
                   truncated=out_cut or err_cut)

    @classmethod
    def killed(cls, reason: str, duration_s: float, timed_out: bool = False) -> ExecResult:
        return cls(error=f"{reason}; {STATE_LOST}", timed_out=timed_out, duration_s=duration_s,
                   restarted=True)


def _clean(value: Any) -> str:
    return SURROGATES.sub("\ufffd", str(value))


def _stream(part: Any, cap: int) -> tuple[str, bool]:
    """One captured stream as text: at most ``cap`` characters of head and tail, whatever the frame says."""
    if not isinstance(part, dict):
        return "", False
    head, tail = _clean(part.get("head", "")), _clean(part.get("tail", ""))
    cut = part.get("cut", 0)
    cut = cut if type(cut) is int and cut > 0 else 0
    if len(head) + len(tail) > cap:
        keep_head = min(len(head), cap * 2 // 3)
        keep_tail = min(len(tail), cap - keep_head)
        cut += len(head) - keep_head + len(tail) - keep_tail
        head, tail = head[:keep_head], tail[len(tail) - keep_tail:]
    if cut == 0:
        return head + tail, False
    return head + TRUNCATED.format(cut=cut) + tail, True


def describe_exit(code: int | None, memory_mb: int) -> str:
    """Why a worker died, from its exit status (a negative code or 128+N means signal N)."""
    if code is None:
        return "the sandbox process stopped responding"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum == signal.SIGXCPU:
        return "CPU time limit exceeded"
    if signum == signal.SIGKILL:
        return f"the sandbox process was killed (memory limit {memory_mb} MB exceeded, or killed)"
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = " (segmentation fault)" if signum == signal.SIGSEGV else ""
        return f"the sandbox process crashed with {name}{hint}"
    return f"the sandbox process exited with code {code}"
