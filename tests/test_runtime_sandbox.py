"""The loop with the real python sandbox: state per episode, cancellation leaves no process."""

import asyncio
import time
from pathlib import Path

import pytest

from agent import Agent, ScriptedBackend

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # degraded-layer warnings on odd hosts


def processes_with(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


async def test_real_python_tool_state_persists_within_an_episode():
    script = ["<code_start>x = 6 * 7<code_end>", "<code_start>print(x)<code_end>", "<answer_start>42<answer_end>"]
    async with Agent(ScriptedBackend(script), tools=["python"]) as a:
        t = await a.run("q")
    assert [c.error for c in t.tool_calls] == [False, False]
    assert t.tool_calls[1].result.strip() == "42"


async def test_cancelled_episode_leaves_no_tool_process():
    marker = "1234.567"
    code = f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\ntime.sleep(60)"
    async with Agent(ScriptedBackend([f"<code_start>{code}<code_end>"]), tools=["python"],
                     tool_timeout_s=120) as a:
        task = asyncio.ensure_future(a.run("q"))
        deadline = time.monotonic() + 60
        while not processes_with(marker):
            assert time.monotonic() < deadline, "the sandboxed program never started"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while processes_with(marker) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert processes_with(marker) == []
        t = await Agent(ScriptedBackend(["<code_start>print('alive')<code_end>", "<answer_start>ok<answer_end>"]),
                        tools=list(a.tools.values())).run("again")
        assert t.tool_calls[0].result.strip() == "alive"


async def test_lone_surrogate_from_sandboxed_code_does_not_break_the_episode():
    script = ["<code_start>raise ValueError('bad ' + chr(0xd800))<code_end>", "<answer_start>ok<answer_end>"]
    async with Agent(ScriptedBackend(script), tools=["python"]) as a:
        t = await a.run("q")
    assert t.tool_calls[0].error and "ValueError: bad" in t.tool_calls[0].result
    t.tool_calls[0].result.encode("utf-8")
