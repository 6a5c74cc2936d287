"""MCP tools from a real server process (tests/fixtures/mcp_server.py over stdio): listed with their
schemas, called inside episodes, one process per episode, gone after the episode ends or is cancelled."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from agent import Agent, ScriptedBackend, ToolCallStarted  # noqa: E402
from agent.cli import main  # noqa: E402
from agent.errors import ToolError  # noqa: E402
from tools import get_tools  # noqa: E402

SERVER = Path(__file__).parent / "fixtures" / "mcp_server.py"


@pytest.fixture
def pids(tmp_path):
    return tmp_path / "pids"


def spec(pids: Path) -> str:
    return "mcp:" + shlex.join([sys.executable, str(SERVER), "--pid-file", str(pids)])


def started(pids: Path) -> list[int]:
    return [int(x) for x in pids.read_text().split()] if pids.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hermes(name: str, args: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def test_the_servers_tools_become_typed_tools(pids):
    tools = {t.name: t for t in get_tools(spec(pids))}
    assert set(tools) == {"add", "nap", "remember", "fail"}
    add = tools["add"]
    assert add.description == "Add two integers." and add.takes_object
    assert add.parameters["properties"]["a"]["type"] == "integer" and add.parameters["required"] == ["a", "b"]
    assert add.schema()["parameters"] == add.parameters
    (pid,) = started(pids)
    assert not alive(pid)  # the server started to list its tools is stopped again


async def test_an_mcp_tool_runs_inside_an_episode(pids):
    script = [hermes("add", {"a": 2, "b": 40}), hermes("add", {"a": "two", "b": 1}), hermes("fail", {"message": "no"}),
              "<answer>42</answer>"]
    async with Agent(ScriptedBackend(script), tools=[spec(pids)], syntax="hermes") as agent:
        traj = await agent.run("what is 2 + 40?")
    ok, bad, failed = traj.tool_calls
    assert (ok.tool, ok.result, ok.error) == ("add", "42", False)
    assert bad.error and bad.result.startswith("error: bad arguments for add: argument 'a' must be an integer")
    assert failed.error and failed.result.startswith("error: ") and "fail" in failed.result
    assert traj.answer == "42" and traj.stop_reason == "answer"
    assert 'Arguments (JSON schema): {"properties": {"a"' in traj.segments[0].text
    listing, episode = started(pids)  # one process to list, one for the episode (shared by its three calls)
    assert not alive(listing) and not alive(episode)  # the episode's server is gone when it ends


async def test_one_server_per_episode_with_state_for_that_episode(pids):
    first = [hermes("remember", {"note": "first"}), hermes("nap", {"seconds": 1.5}),
             hermes("remember", {"note": "first-again"}), "<answer>done</answer>"]
    second = [hermes("remember", {"note": "second"}), "<answer>done</answer>"]

    def script(ctx: str) -> str:
        turn = ctx.rsplit("<|assistant|>", 1)[-1]
        return (first if "the first one" in ctx else second)[turn.count("<tool_response>")]

    async with Agent(ScriptedBackend(script), tools=[spec(pids)], syntax="hermes") as agent:
        a = asyncio.create_task(agent.run("the first one"))
        for _ in range(300):
            if len(started(pids)) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # episode A is napping on its server while B runs
        b = await agent.run("the second one")
        a = await a
    assert [c.result for c in a.tool_calls] == ["first", "slept 1.5", "first, first-again"]  # state within one
    assert [c.result for c in b.tool_calls] == ["second"]  # none across episodes, even overlapping ones
    assert len(started(pids)) == 3 and not any(alive(p) for p in started(pids))


async def test_the_server_is_gone_after_cancel(pids):
    agent = Agent(ScriptedBackend([hermes("nap", {"seconds": 60}), "<answer>x</answer>"]), tools=[spec(pids)],
                  syntax="hermes", tool_timeout_s=120)
    calling = asyncio.Event()

    async def run():
        async for ev in agent.stream("q"):
            if isinstance(ev, ToolCallStarted):
                calling.set()

    task = asyncio.create_task(run())
    await asyncio.wait_for(calling.wait(), 30)
    for _ in range(300):  # the episode's server is up and the call is in flight
        if len(started(pids)) == 2:
            break
        await asyncio.sleep(0.05)
    episode_pid = started(pids)[1]
    assert alive(episode_pid)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(episode_pid)
    await agent.aclose()


def test_a_server_that_fails_to_start_is_a_clear_error(tmp_path):
    crash = "mcp:" + shlex.join([sys.executable, "-c", "import sys; sys.stderr.write('no config file\\n'); "
                                 "sys.exit(3)"])
    with pytest.raises(ToolError, match=r"(?s)MCP server \(.*\) failed to start: .*its stderr ends with:\nno config file"):
        Agent(ScriptedBackend([]), tools=[crash])
    with pytest.raises(ToolError, match="failed to start"):
        get_tools("mcp:" + str(tmp_path / "no-such-server"))
    with pytest.raises(ToolError, match="give the command"):
        get_tools("mcp:")


def test_agent_tools_lists_an_mcp_server(pids, capsys):
    assert main(["tools", spec(pids)]) == 0
    out = capsys.readouterr().out
    assert "add  [mcp " in out and "call: add(a: integer, b: integer)" in out and "nap(seconds: number)" in out
