"""Configs compose: tools own their options, the backend its own, trainers nest the runtime config,
and the CLI flags come from the nested dataclasses."""

from __future__ import annotations

import pytest

from agent import Agent, ScriptedBackend
from agent.backends import BackendConfig
from agent.cli import build_parser
from agent.config import dump_config, from_args
from agent.errors import ConfigError
from agent.runtime import RuntimeConfig
from train.grpo import GRPOConfig


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_tool_and_backend_flags_land_in_their_own_configs():
    cfg = from_args(RuntimeConfig, parse("run", "q", "--search-index", "i.db", "--search-top-k", "5",
                                         "--python-memory-mb", "256", "--n-seq", "4", "--backend", "llama_cpp"))
    assert cfg.tool_config == {"search": {"index": "i.db", "top_k": 5}, "python": {"memory_mb": 256}}
    assert cfg.llm == BackendConfig(backend="llama_cpp", n_seq=4)
    assert cfg.tool_options("search") == {"index": "i.db", "top_k": 5, "timeout_s": 10.0}
    assert RuntimeConfig(tool_config={"search": {"timeout_s": 3.0}}).tool_options("search")["timeout_s"] == 3.0


def test_a_config_file_round_trips(tmp_path):
    cfg = RuntimeConfig(tool_config={"search": {"index": "i.db"}}, llm=BackendConfig(n_ctx=1024))
    again = RuntimeConfig(**dump_config(cfg))
    assert again == cfg and isinstance(again.llm, BackendConfig)


def test_unknown_or_bad_tool_options_fail_before_a_model_loads():
    with pytest.raises(ConfigError, match="unknown search option"):
        RuntimeConfig(tool_config={"search": {"colour": "red"}})
    with pytest.raises(ConfigError, match="needs url"):
        RuntimeConfig(tool_config={"search": {"backend": "http"}})
    with pytest.raises(ConfigError, match="n_seq"):
        RuntimeConfig(llm={"n_seq": 0})


async def test_tool_options_reach_the_tool_and_backend_overrides_reach_llm():
    cfg = RuntimeConfig(tool_config={"python": {"memory_mb": 300, "pool_size": 0}})
    async with Agent(ScriptedBackend([]), tools=["python"], config=cfg, n_seq=3) as agent:
        sandbox = agent.tools["python"].config
        assert (sandbox.memory_mb, sandbox.pool_size, sandbox.timeout_s) == (300, 0, 10.0)
        assert agent.config.llm.n_seq == 3


def test_grpo_nests_the_runtime_config_and_keeps_its_own_defaults():
    ns = build_parser().parse_args(["train", "grpo", "--temperature", "0.5", "--tools", "python,search",
                                    "--python-backend", "docker", "--seed", "7"])
    cfg = from_args(GRPOConfig, ns)
    r = cfg.runtime()
    assert (r.temperature, r.tools, r.tool_config, r.seed) == (0.5, ["python", "search"],
                                                               {"python": {"backend": "docker"}}, 7)
    assert (r.max_new_tokens, r.max_tool_calls, r.max_result_tokens) == (256, 3, 128)  # GRPO's, not the runtime's
    assert GRPOConfig().rollout.temperature == 1.0 and GRPOConfig().resume


def test_trainers_share_one_naming():
    from train.reward import RewardConfig
    from train.sft import SFTConfig

    for cls in (SFTConfig, GRPOConfig, RewardConfig):
        assert "output_dir" in cls.__dataclass_fields__ and "out" not in cls.__dataclass_fields__, cls.__name__
    assert SFTConfig.resume and GRPOConfig.resume  # both checkpoint; both continue by default
