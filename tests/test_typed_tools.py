"""Typed tools: schema from type hints, defaults and docstring; checked arguments; the schema in the
prompt; JSON-call and tag syntaxes; chat templates that render tools; the built-ins' frozen prompt."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Literal

import pytest

from agent import PRESETS, Agent, ScriptedBackend
from tools import ArgumentError, FunctionTool, Tool, ToolOutput, tool
from tools.schema import check, function_schema, render_chat, template_accepts_tools

FIXTURES = Path(__file__).parent / "fixtures"


class Units(enum.Enum):
    METRIC = "metric"
    IMPERIAL = "imperial"


SEEN: list[dict] = []


def forecast(city: str, days: int = 1, units: Units = Units.METRIC, scale: float = 1.0) -> str:
    """Weather forecast for a city.

    Args:
        city: the city name, e.g. Paris
        days: how many days ahead; one day
            is the default
        units (Units): metric or imperial
    """
    SEEN.append({"city": city, "days": days, "units": units, "scale": scale})
    return f"{city}: {days} day(s) in {units.value}"


def _tool() -> FunctionTool:
    SEEN.clear()
    return FunctionTool(forecast)


def hermes(name: str, args: object) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


# -- the schema ---------------------------------------------------------------------------------
def test_schema_from_hints_defaults_and_docstring():
    desc, schema, _ = function_schema(forecast)
    assert desc == "Weather forecast for a city."
    assert schema == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city name, e.g. Paris"},
            "days": {"type": "integer", "default": 1, "description": "how many days ahead; one day is the default"},
            "units": {"enum": ["metric", "imperial"], "type": "string", "default": "metric",
                      "description": "metric or imperial"},
            "scale": {"type": "number", "default": 1.0},
        },
        "required": ["city"],
        "additionalProperties": False,
    }


def test_schema_of_lists_literals_optionals_and_sphinx_docs():
    def f(xs: list[int], mode: Literal["a", "b"], flag: bool = False, note: str | None = None) -> str:
        """Do it.

        :param xs: numbers
        :param mode: which way
        """
        return ""

    desc, schema, _ = function_schema(f)
    props = schema["properties"]
    assert desc == "Do it."
    assert props["xs"] == {"type": "array", "items": {"type": "integer"}, "description": "numbers"}
    assert props["mode"] == {"enum": ["a", "b"], "type": "string", "description": "which way"}
    assert props["flag"] == {"type": "boolean", "default": False}
    assert props["note"] == {"type": ["string", "null"], "default": None}
    assert schema["required"] == ["xs", "mode"]


class Point:
    pass


def test_unsupported_annotation_fails_when_the_tool_is_defined():
    def f(p: Point) -> str:
        return ""

    with pytest.raises(TypeError, match=r"tool f: parameter 'p': type .*Point.* is not supported"):
        tool(f)
    with pytest.raises(TypeError, match="ordinary named parameter"):
        FunctionTool(lambda *xs: "")


@pytest.mark.parametrize("args,msg", [
    ({"city": "Paris", "days": "three"}, "argument 'days' must be an integer, got \"three\""),
    ({"city": "Paris", "days": True}, "argument 'days' must be an integer, got true"),
    ({"days": 2}, "missing required argument 'city'"),
    ({"city": "Paris", "when": "now"}, "unknown argument 'when' (arguments: city, days, units, scale)"),
    ({"city": "Paris", "units": "kelvin"}, "argument 'units' must be one of \"metric\", \"imperial\""),
    ({"city": 5}, "argument 'city' must be a string, got 5"),
])
def test_check_names_what_is_wrong(args, msg):
    _, schema, _ = function_schema(forecast)
    with pytest.raises(ArgumentError) as e:
        check(schema, args)
    assert msg in str(e.value)


def test_check_accepts_a_good_call_and_ints_for_numbers():
    _, schema, _ = function_schema(forecast)
    good = {"city": "Oslo", "days": 3, "units": "imperial", "scale": 2}
    assert check(schema, good) is good


# -- calls through the runtime ------------------------------------------------------------------
async def test_three_parameter_tool_through_hermes_json_and_its_schema_in_the_prompt():
    t = _tool()
    call = hermes("forecast", {"city": "Paris", "days": 3, "units": "imperial"})
    agent = Agent(ScriptedBackend([call, "<answer>ok</answer>"]), tools=[t], syntax="hermes")
    traj = await agent.run("weather?")
    (c,) = traj.tool_calls
    assert (c.tool, c.result, c.error) == ("forecast", "Paris: 3 day(s) in imperial", False)
    assert SEEN == [{"city": "Paris", "days": 3, "units": Units.IMPERIAL, "scale": 1.0}]  # typed values arrive
    assert json.loads(c.arg) == {"city": "Paris", "days": 3, "units": "imperial"}
    prompt = traj.segments[0].text
    assert "Arguments (JSON schema): " + json.dumps(t.parameters) in prompt
    assert ('Call it like this: <tool_call>{"name": "forecast", "arguments": {"city": "..."}}</tool_call>'
            in prompt)
    assert traj.answer == "ok"


@pytest.mark.parametrize("args,fragment", [
    ({"city": "Paris", "days": "three"}, "argument 'days' must be an integer"),
    ({"days": 1}, "missing required argument 'city'"),
    (["Paris"], "arguments must be a JSON object"),
])
async def test_a_bad_argument_is_an_error_result_not_an_exception(args, fragment):
    t = _tool()
    agent = Agent(ScriptedBackend([hermes("forecast", args), "<answer>sorry</answer>"]), tools=[t], syntax="hermes")
    traj = await agent.run("weather?")
    (c,) = traj.tool_calls
    assert c.error and c.result.startswith("error: bad arguments for forecast: ")
    assert fragment in c.result
    assert 'call it as forecast(city: string, days: integer = 1, units: "metric" | "imperial" = "metric"' in c.result
    assert c.meta == {"bad_arguments": True}
    assert SEEN == []  # the function never ran
    assert traj.stop_reason == "answer" and traj.answer == "sorry"  # the episode went on


async def test_tag_syntax_takes_a_json_object_for_a_typed_tool():
    t = _tool()
    agent = Agent(ScriptedBackend(['<forecast_start>{"city": "Rome", "days": 2}<forecast_end>',
                                   "<answer_start>ok<answer_end>"]), tools=[t], syntax="splice")
    traj = await agent.run("q")
    assert traj.tool_calls[0].result == "Rome: 2 day(s) in metric"
    assert '<forecast_start>{"city": "..."}<forecast_end>' in traj.segments[0].text
    bad = await Agent(ScriptedBackend(["<forecast_start>Rome<forecast_end>", "<answer_start>x<answer_end>"]),
                      tools=[_tool()]).run("q")
    assert bad.tool_calls[0].error and 'write the arguments as a JSON object, e.g. {"city": "..."}' in \
        bad.tool_calls[0].result


async def test_single_parameter_tools_take_the_bare_value_in_tag_syntaxes():
    def square(n: int) -> int:
        """Square a number."""
        return n * n

    agent = Agent(ScriptedBackend(["<square_start>12<square_end>", "<square_start>twelve<square_end>",
                                   "<answer_start>144<answer_end>"]), tools=[FunctionTool(square)])
    traj = await agent.run("q")
    assert [(c.result, c.error) for c in traj.tool_calls][0] == ("144", False)
    assert traj.tool_calls[1].error and "argument 'n' must be an integer" in traj.tool_calls[1].result


async def test_one_string_tools_keep_the_one_string_form():
    @tool(name="shout")
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    assert not shout.takes_object and shout.arg_name == "text"
    a = Agent(ScriptedBackend(["<shout_start>hi<shout_end>", "<answer_start>HI<answer_end>"]), tools=[shout])
    traj = await a.run("q")
    assert traj.tool_calls[0].result == "HI"
    assert "Arguments (JSON schema)" not in a.system_prompt()  # one-string tools: prompt text as before
    h = Agent(ScriptedBackend([hermes("shout", {"text": "yo"}), "<answer>YO</answer>"]), tools=[shout],
              syntax="hermes")
    assert (await h.run("q")).tool_calls[0].result == "YO"


async def test_a_direct_call_is_checked_too():
    t = _tool()
    assert (await t.call({"city": "Bern"})).text == "Bern: 1 day(s) in metric"
    assert (await t.call('{"city": "Bern", "days": 4}')).text == "Bern: 4 day(s) in metric"
    with pytest.raises(ArgumentError, match="must be an integer"):
        await t.call({"city": "Bern", "days": 1.5})


async def test_a_typed_tool_may_return_json_values():
    def stats(xs: list[float]) -> dict:
        """Mean and count."""
        return {"n": len(xs), "mean": sum(xs) / len(xs)}

    out = await FunctionTool(stats).call({"xs": [1, 2, 3]})
    assert json.loads(out.text) == {"n": 3, "mean": 2.0}


class Plain(Tool):
    name, description = "plain", "a classic one-string tool"

    async def call(self, arg):
        return ToolOutput(f"got {arg!r}")


async def test_classic_tools_are_unchanged_in_json_calls():
    traj = await Agent(ScriptedBackend([hermes("plain", {"input": 5}), "<answer>ok</answer>"]), tools=[Plain()],
                       syntax="hermes").run("q")
    assert traj.tool_calls[0].result == "got '5'"
    assert Plain().schema() == {"name": "plain", "description": "a classic one-string tool", "parameters": {
        "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}


# -- the built-ins' prompt is frozen ------------------------------------------------------------
def test_builtin_system_prompts_are_byte_identical():
    """python and search in every syntax: a model is trained on this exact text."""
    from tools.python import PythonTool
    from tools.search.tool import SearchTool

    want = json.loads((FIXTURES / "builtin_system_prompts.json").read_text())
    make = {"python": PythonTool, "search": lambda: SearchTool(backend="web")}
    frozen = sorted({key.split(":")[0] for key in want})  # a preset added later is frozen once recorded
    assert set(frozen) <= set(PRESETS) and len(frozen) >= 5
    for syntax in frozen:
        for names in (["python"], ["search"], ["python", "search"]):
            for identity in ("", "You are Splicey."):
                agent = Agent(ScriptedBackend([]), tools=[make[n]() for n in names], syntax=syntax, system=identity)
                key = f"{syntax}:{','.join(names)}" + (":identity" if identity else "")
                assert agent.system_prompt() == want[key], key
    assert len(want) == 2 * 3 * len(frozen)


# -- chat templates that render tools -----------------------------------------------------------
# The shape of Qwen2.5's template (written here): tools go in the system turn as JSON lines.
TOOLS_TEMPLATE = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if m.role != 'system' %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


class CharTokenizer:
    """Code points as ids, with a chat template string: what ScriptedBackend needs to look like a
    model whose template knows tools."""

    eos_ids = {0}

    def __init__(self, template: str):
        self.chat_template = template

    def encode(self, text: str, special: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i)

    def chat_prompt(self, messages):
        return render_chat(self.chat_template, messages, [])


def test_template_accepts_tools():
    assert template_accepts_tools(TOOLS_TEMPLATE)
    assert not template_accepts_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_accepts_tools("{% broken")


async def test_hermes_renders_tools_through_a_template_that_takes_them():
    t = _tool()
    backend = ScriptedBackend([hermes("forecast", {"city": "Lima"}), "<answer>ok</answer>"],
                              tokenizer=CharTokenizer(TOOLS_TEMPLATE))
    agent = Agent(backend, tools=[t], syntax="hermes", system="You are Splicey.")
    traj = await agent.run("weather?")
    prompt = traj.segments[0].text
    schema = {"type": "function", "function": t.schema()}
    assert f"<tools>\n{json.dumps(schema, ensure_ascii=False)}\n</tools>" in prompt
    assert prompt.startswith("<|im_start|>system\nYou are Splicey.\nWhen you know the final answer, write it "
                             "<answer>like this</answer> and stop.\n\n# Tools\n")
    assert "Call it like this" not in prompt  # splice's own tool section is left to the template
    assert prompt.endswith("<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n")
    assert traj.tool_calls[0].result == "Lima: 1 day(s) in metric"


async def test_tag_syntaxes_and_plain_templates_keep_splices_prompt():
    t = _tool()
    tagged = Agent(ScriptedBackend([], tokenizer=CharTokenizer(TOOLS_TEMPLATE)), tools=[t], syntax="splice")
    assert tagged.template_tools is None and "Call it like this" in tagged.system_prompt()
    plain = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    backend = ScriptedBackend([], tokenizer=CharTokenizer(plain))
    h = Agent(backend, tools=[t], syntax="hermes")
    assert h.template_tools is None
    assert h.encode_prompt(h.messages("q")) == backend.encode_chat(h.messages("q"))


@pytest.mark.slow
async def test_a_real_tokenizer_renders_tools_with_apply_chat_template(tiny_model_dir):
    from agent.backends.transformers import TransformersBackend, load_hf

    model, tok = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    tok.chat_template = TOOLS_TEMPLATE
    t = _tool()
    agent = Agent(TransformersBackend(model=model, tokenizer=tok), tools=[t], syntax="hermes", max_new_tokens=4)
    traj = await agent.run("weather?")
    msgs = [{"role": m["role"], "content": m["content"]} for m in agent.messages("weather?")]
    want = tok.apply_chat_template(msgs, tools=[{"type": "function", "function": t.schema()}], tokenize=False,
                                   add_generation_prompt=True)
    assert traj.segments[0].text == want and '"name": "forecast"' in want
