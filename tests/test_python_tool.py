"""The python tool: one lazy sandbox session per episode; model-caused failures are results."""

from __future__ import annotations

import asyncio

import pytest

from tools import get_tool
from tools.python import PythonTool

# Functional tests: a host that lacks an isolation layer still runs them (the warning is the
# documented behaviour; the security suite does NOT ignore it).
pytestmark = pytest.mark.filterwarnings("ignore::sandbox.layers.SandboxDegraded")


async def test_session_is_stateful_and_lazy():
    tool = PythonTool(timeout_s=2, pool_size=1)
    try:
        async with tool.session() as call:
            assert tool._pool is None  # nothing started before the first call
            first = await call("x = 6")
            out = await call("x * 7")
            assert (first.text, first.error) == ("(no output)", False)
            assert (out.text, out.error) == ("42", False)
            assert set(out.meta) == {"duration_s", "timed_out", "truncated", "restarted"}
        async with tool.session() as call:  # a new episode starts from scratch
            out = await call("x")
            assert out.error and "NameError: name 'x' is not defined" in out.text
    finally:
        await tool.aclose()
    assert tool._pool is None


async def test_model_caused_failures_never_raise():
    tool = PythonTool(timeout_s=1, pool_size=1, max_output_chars=500, kill_grace_s=0.5)
    try:
        async with tool.session() as call:
            bad = await call("def f(:\n  pass")
            assert bad.error and "SyntaxError" in bad.text
            slow = await call("while True: pass")
            assert slow.error and slow.meta["timed_out"] and "timed out after 1 s" in slow.text
            crash = await call("import os; os._exit(1)")
            assert crash.error and crash.meta["restarted"]
            loud = await call("print('a' * 100000)")
            assert not loud.error and loud.meta["truncated"] and "output truncated" in loud.text
            assert len(loud.text) < 600
            assert (await call("print('ok')")).text == "ok"
    finally:
        await tool.aclose()


async def test_registry_builds_the_tool_with_runtime_options():
    tool = get_tool("python", backend="process", timeout_s=3)
    try:
        assert isinstance(tool, PythonTool) and tool.name == "python" and tool.arg_name == "code"
        assert tool.config.timeout_s == 3 and tool.timeout_s > 3  # room for a hard kill + restart
        assert tool.examples and "State persists" in tool.description
        results = await asyncio.gather(*(tool.call(f"print({i} ** 2)") for i in range(4)))
        assert [r.text for r in results] == ["0", "1", "4", "9"]
    finally:
        await tool.aclose()


async def test_lone_surrogate_exception_is_an_encodable_error_result():
    tool = PythonTool(timeout_s=2, pool_size=0)
    try:
        out = await tool.call("raise ValueError('bad ' + chr(0xd800))")
    finally:
        await tool.aclose()
    assert out.error and "ValueError: bad \ufffd" in out.text
    out.text.encode("utf-8")
