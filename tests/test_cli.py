"""The thin CLI: help everywhere, clear one-line errors, a real run on the default model."""

import json
import subprocess
import sys

import pytest

from agent.cli import build_parser, main


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
