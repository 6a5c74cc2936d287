"""The thin CLI: help everywhere, clear one-line errors, a real run on the default model."""

import argparse
import json
import logging
import subprocess
import sys
from importlib.metadata import version

import pytest

from agent.backends import BackendConfig, choose_backend
from agent.cli import build_parser, configure_logging, iter_parsers, main


def _command_paths() -> list[list[str]]:
    """The argv prefix of every parser in the tree (["train", "sft"], ...): new subcommands join."""
    def walk(parser: argparse.ArgumentParser, path: list[str]):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*path, name])

    return list(walk(build_parser(), []))


COMMANDS = _command_paths()


def test_the_tree_holds_every_plugin():
    names = {" ".join(c) for c in COMMANDS}
    assert {"run", "chat", "eval", "index build", "train sft", "train data", "train export"} <= names
    assert len(list(iter_parsers(build_parser()))) == len(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) or "agent" for c in COMMANDS])
def test_every_help_exits_0_and_shows_defaults(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: agent")
    parser = next(p for p, c in zip(iter_parsers(build_parser()), COMMANDS) if c == cmd)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.required or isinstance(action, (argparse._HelpAction,
                                                                               argparse._VersionAction)):
            continue
        shown = formatter._expand_help(action) if action.help else ""
        if action.default is argparse.SUPPRESS:  # dataclass flags: the field default, always shown
            assert "(default: " in shown, (cmd, action.option_strings, shown)
        elif action.default not in (None, "", False, []):
            assert f"default: {action.default}" in shown or "(default: " in shown, (cmd, action.option_strings)


def test_percent_in_dataclass_help_is_literal(capsys):
    with pytest.raises(SystemExit):
        main(["train", "sft", "--help"])
    assert "cosine to 10% (default: 10)" in " ".join(capsys.readouterr().out.split())


def test_field_defaults_are_shown(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "tool calls per episode before it is stopped (default: 8)" in out
    assert "(default: python,search)" in out and "(default: unset)" in out


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"agent {version('splice')}"


def test_logging_levels_reach_stderr(capsys):
    log = logging.getLogger("splice.evals")
    for verbose, quiet, shown in ((0, False, {"warning"}), (1, False, {"info", "warning"}),
                                  (2, False, {"debug", "info", "warning"}), (1, True, set())):
        with configure_logging(verbose, quiet):
            for name in ("debug", "info", "warning"):
                getattr(log, name)(f"{name} resumed from run-x")
        err = capsys.readouterr().err
        assert {n for n in ("debug", "info", "warning") if f"{n} resumed from run-x" in err} == shown
    assert log.level == logging.NOTSET and not logging.getLogger("splice").handlers  # restored


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_flag_shows_info_logs_of_a_command(tmp_path, capsys, where):
    (tmp_path / "a.txt").write_text("Aardvarks dig burrows.")
    args = ["index", "build", str(tmp_path / "a.txt"), "-o", str(tmp_path / "i.db"), "--no-progress"]
    assert main(args) == 0
    assert "INFO" not in capsys.readouterr().err
    assert main(["-v", *args] if where == "before" else [*args, "-v"]) == 0
    assert f"agent: INFO: indexing {tmp_path / 'a.txt'} into" in capsys.readouterr().err


@pytest.mark.parametrize("model, base_url, env, expected", [
    ("http://127.0.0.1:8080/v1", "", {}, "openai"),          # 1. a URL model
    ("https://example.org/v1", "", {"OPENAI_BASE_URL": ""}, "openai"),
    ("qwen2.5-7b", "http://127.0.0.1:8080/v1", {}, "openai"),  # 2. --base-url
    ("qwen2.5-7b", "", {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}, "openai"),  # 4. a served name
    ("LOCAL_GGUF", "", {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}, "llama_cpp"),  # 3. a local file wins
    ("LOCAL_DIR", "", {}, "transformers"),
])
def test_auto_backend_precedence(tmp_path, model, base_url, env, expected):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    model = {"LOCAL_GGUF": str(tmp_path / "m.gguf"), "LOCAL_DIR": str(tmp_path)}.get(model, model)
    assert choose_backend(model, BackendConfig(base_url=base_url), env=env) == expected


def test_auto_backend_name_without_a_server_is_not_found():
    from agent.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="OPENAI_BASE_URL"):
        choose_backend("qwen2.5-7b", BackendConfig(), env={})


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "chat"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["run", "chat"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-tool-calls" in out and "--syntax" in out and "--tools" in out


def test_missing_model_file_is_one_line_error(capsys, tmp_path):
    code = main(["run", "hi", "--tools", "none", "--model", str(tmp_path / "nope.gguf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("agent: error: model not found") and "\n" not in err


def test_bad_option_value(capsys):
    code = main(["run", "hi", "--syntax", "klingon", "--tools", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown syntax 'klingon'" in err


def test_unknown_tool(capsys):
    code = main(["run", "hi", "--tools", "teleport", "--model", "default"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown tool 'teleport'" in err


def test_bad_flag_type_exits_2():
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "q", "--max-new-tokens", "lots"])
    assert e.value.code == 2


@pytest.mark.slow
def test_agent_run_json_on_default_model():
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "Say hello.", "--tools", "none",
                          "--max-new-tokens", "16", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    traj = json.loads(out.stdout.strip().splitlines()[-1])
    assert traj["n_generated"] > 0 and traj["model"].startswith("SmolLM2")
    assert traj["stop_reason"] in {"eos", "max_new_tokens", "answer"}
