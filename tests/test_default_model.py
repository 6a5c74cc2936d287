"""The embedded default model as a user meets it: SmolLM2-135M-Instruct (Q4_1) with the shipped
tool-use adapter, through llama.cpp and the real sandbox. README command 1 is the first test."""

import json

import pytest

pytest.importorskip("llama_cpp")

from agent import Agent  # noqa: E402
from agent.backends import shipped_adapter  # noqa: E402
from agent.cli import main  # noqa: E402
from agent.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_adapter_ships_with_its_card():
    path = shipped_adapter()
    assert path is not None and path.stat().st_size > 1_000_000
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["data"]["sha256"] and card["sft"]["config"]["lora_r"] > 0
    assert card["eval"]["adapter"]["tasks-heldout"]["python"]["accuracy"] > 0.5


def test_readme_command_1_counts_the_rs_with_python(capsys):
    assert main(["run", "How many r's are in strawberry?"]) == 0
    out = capsys.readouterr().out
    assert "strawberry" in out and "3" in out.splitlines()[-1]
    assert main(["run", "How many r's are in strawberry?", "--json"]) == 0
    traj = json.loads(capsys.readouterr().out)
    assert traj["answer"].strip() == "3"
    calls = traj["tool_calls"]
    assert calls and calls[0]["tool"] == "python" and calls[0]["result"].strip() == "3"
    assert "strawberry" in calls[0]["arg"]


async def test_default_applies_the_adapter_and_base_does_not():
    async with Agent(model="default", tools=["python"]) as a, Agent(model="base", tools=["python"]) as b:
        assert "+smollm2-tools" in a.backend.model_id  # merged into the weights (agent.backends._merged)
        assert "+" not in b.backend.model_id
        ta = await a.run("What is 48213 * 9174?")
        assert ta.tool_calls and ta.answer and ta.answer.replace(",", "") == str(48213 * 9174)


def test_an_adapter_on_a_backend_that_cannot_apply_it_is_a_clear_error():
    from agent.backends import BackendConfig, load_backend

    with pytest.raises(ConfigError, match="llama_cpp backend only"):
        load_backend("default", BackendConfig(backend="transformers"))
