"""Tool plugins by entry point (``splice.tools``): a test distribution on sys.path is listed by
``agent tools`` and runs in an episode; a broken one is reported by name; built-ins are registered
the same way; a subcommand whose package fails to import says so instead of vanishing."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from agent import Agent, ScriptedBackend
from agent.cli import build_parser, main
from agent.errors import ToolError
from tools import BUILTIN_TOOLS, ENTRY_POINT_GROUP, Tool, available_tools, get_tool, tool_catalog

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
from typing import Literal

from tools import Tool, ToolOutput


def convert(amount: float, unit: Literal["km", "mi"] = "km", digits: int = 1) -> str:
    """Convert a distance.

    Args:
        amount: the distance
        unit: the unit it is in
        digits: decimals to keep
    """
    km = amount if unit == "km" else amount * 1.609344
    return f"{km:.{digits}f} km = {km / 1.609344:.{digits}f} mi"


class Shout(Tool):
    name = "shout"
    description = "Upper-case the text."
    arg_name = "text"

    def __init__(self, suffix: str = "!"):
        self.suffix = suffix

    async def call(self, arg):
        return ToolOutput(arg.upper() + self.suffix)
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A distribution 'splice-demo-tools' installed the way pip leaves one: a package and its
    .dist-info (METADATA, entry_points.txt) in a directory on sys.path."""
    (tmp_path / "splice_demo_tools").mkdir()
    (tmp_path / "splice_demo_tools" / "__init__.py").write_text(PLUGIN)
    (tmp_path / "splice_demo_broken.py").write_text("import splice_no_such_dependency\n")
    info = tmp_path / "splice_demo_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: splice-demo-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        demo_convert = splice_demo_tools:convert
        shout = splice_demo_tools:Shout
        demo_misnamed = splice_demo_tools:Shout
        demo_broken = splice_demo_broken:tool
        demo_missing = splice_demo_tools:nothing_here
        python = splice_demo_tools:Shout
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("tools.base._REGISTRY", {})  # @tool functions other tests registered in this process
    yield tmp_path
    for mod in ("splice_demo_tools", "splice_demo_broken"):
        sys.modules.pop(mod, None)


def test_builtins_are_the_tool_modules_of_the_package():
    assert {"python": "tools.python:TOOL", "search": "tools.search:TOOL"}.items() <= BUILTIN_TOOLS.items()
    assert not {"base", "schema", "registry", "mcp", "errors", "cli"} & set(BUILTIN_TOOLS)
    for name, target in BUILTIN_TOOLS.items():
        mod, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(mod), attr)
        assert issubclass(cls, Tool) and cls.name == name and cls.options is not None
    assert {"python", "search"} <= set(available_tools())


def test_a_new_tool_module_is_a_builtin(tmp_path, monkeypatch):
    """Adding a built-in is one file under tools/: ``builtin_tools`` reads the package's modules."""
    import tools.registry as base

    pkg = tmp_path / "tools"
    pkg.mkdir()
    (pkg / "clock.py").write_text("class Clock: ...\nTOOL = Clock\n")
    (pkg / "helpers.py").write_text("X = 1  # no TOOL line: not a tool\n")
    monkeypatch.setattr(base, "__file__", str(pkg / "base.py"))
    base.builtin_tools.cache_clear()
    try:
        assert base.builtin_tools() == {"clock": "tools.clock:TOOL"}
    finally:
        monkeypatch.undo()
        base.builtin_tools.cache_clear()


def test_a_plugin_tool_is_listed_with_its_schema(plugin_dist, capsys):
    infos = {i.name: i for i in tool_catalog()}
    conv = infos["demo_convert"]
    assert conv.source == "plugin splice-demo-tools" and conv.description == "Convert a distance." and not conv.error
    assert conv.parameters["properties"]["unit"] == {"enum": ["km", "mi"], "type": "string", "default": "km",
                                                     "description": "the unit it is in"}
    assert infos["shout"].parameters == {"type": "object", "properties": {"text": {"type": "string"}},
                                              "required": ["text"]}
    pythons = [i for i in tool_catalog() if i.name == "python"]
    assert [(i.source, bool(i.error)) for i in pythons] == [("built-in", False), ("plugin splice-demo-tools", True)]
    assert "sandbox" in pythons[0].description
    assert main(["tools"]) == 1  # the broken plugins make it fail, after listing everything
    out, err = capsys.readouterr()
    assert "demo_convert  [plugin splice-demo-tools]" in out
    assert 'call: demo_convert(amount: number, unit: "km" | "mi" = "km", digits: integer = 1)' in out
    assert "cannot be loaded: demo_broken, demo_misnamed, demo_missing, python" in err
    assert main(["tools", "--json", "demo_convert"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["name"] == "demo_convert" and row["parameters"]["required"] == ["amount"]


def test_a_broken_plugin_is_reported_by_name(plugin_dist, capsys):
    infos = {i.name: i for i in tool_catalog()}
    assert "ModuleNotFoundError: No module named 'splice_no_such_dependency'" in infos["demo_broken"].error
    assert "AttributeError" in infos["demo_missing"].error
    assert "entry point 'demo_misnamed' gives a tool named 'shout'; make the names equal" in infos["demo_misnamed"].error
    assert "PythonTool" in repr(get_tool("python"))  # a plugin cannot take a built-in's name over
    with pytest.raises(ToolError, match=r"tool plugin 'demo_broken' \(plugin splice-demo-tools\).*"
                                        r"No module named 'splice_no_such_dependency'"):
        get_tool("demo_broken")
    assert main(["run", "q", "--tools", "demo_broken"]) == 2
    assert "demo_broken" in capsys.readouterr().err
    main(["tools"])
    out = capsys.readouterr().out
    assert "demo_broken  [plugin splice-demo-tools]  BROKEN: cannot import" in out
    assert "python  [plugin splice-demo-tools]  BROKEN: its name is taken by the built-in tool 'python'" in out


async def test_plugin_tools_run_in_an_episode(plugin_dist):
    call = '<tool_call>{"name": "demo_convert", "arguments": {"amount": 10, "unit": "mi", "digits": 2}}</tool_call>'
    shout = '<tool_call>{"name": "shout", "arguments": {"text": "hi"}}</tool_call>'
    agent = Agent(ScriptedBackend([call, shout, "<answer>done</answer>"]), tools=["demo_convert", "shout"],
                  syntax="hermes")
    traj = await agent.run("how far?")
    assert [c.result for c in traj.tool_calls] == ["16.09 km = 10.00 mi", "HI!"]
    assert "Arguments (JSON schema)" in traj.segments[0].text and traj.answer == "done"


def test_a_subcommand_whose_package_fails_to_import_says_why(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "train.cli", None)  # importing it now raises ImportError
    monkeypatch.setattr("agent.cli._PLUGINS", [("index", "tools.search.cli"), ("train", "train.cli"),
                                               ("ghost", "splice_no_such_package.cli")])
    parser = build_parser()
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    assert helps["train"].startswith("(unavailable: ModuleNotFoundError") and "ghost" in helps
    assert main(["train", "sft", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "'agent train' is unavailable: importing train.cli failed: ModuleNotFoundError" in err
    assert main(["ghost"]) == 2
    assert "'agent ghost' is unavailable: importing splice_no_such_package.cli failed: ModuleNotFoundError" in \
        capsys.readouterr().err
