"""Bad input at the command line: each case is one line on stderr, ``agent: error: ...``, exit 2, and
never a traceback. Most run ``agent.cli.main`` in-process (fast); argv that only a real process can
carry (bytes that are not UTF-8) runs ``python -m agent.cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main

REPO = Path(__file__).resolve().parent.parent
NO_MODEL = ["--model", "/nonexistent/model.gguf"]  # a case that got past its check would say "model not found"


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("agent: error: "), err
    return err


def run_cli(args: list[str | bytes], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=120)


# -- --tools ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, why", [("os:sep", "is not a Tool, Tool class or function"),
                                       ("json:loads", "is not usable as a tool"),  # untyped parameters
                                       ("builtins:print", "is not usable as a tool")])  # *args
def test_import_path_that_is_not_a_tool(capsys, spec, why):
    err = one_line_error(capsys, ["run", "q", "--tools", spec, *NO_MODEL])
    assert f"{spec!r} {why}" in err


def test_tool_module_that_raises_on_import(capsys, tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = one_line_error(capsys, ["run", "q", "--tools", "explodes_on_import:tool", *NO_MODEL])
    assert "cannot import tool 'explodes_on_import:tool': RuntimeError: boom at import" in err


# -- text that is not UTF-8 -------------------------------------------------------------------------

def test_non_utf8_question_from_a_real_argv(tmp_path):
    done = run_cli(["run", b"how many r in \xffstrawberry?", "--tools", "none", *NO_MODEL], tmp_path)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("agent: error: the question is not valid UTF-8") and "position 14" in err


def test_non_utf8_corpus(capsys, tmp_path):
    (tmp_path / "corpus.jsonl").write_bytes(b'{"title": "t", "text": "na\xefve"}\n')
    err = one_line_error(capsys, ["index", "build", str(tmp_path / "corpus.jsonl"), "-o", str(tmp_path / "i.db"),
                                  "--no-progress"])
    assert "corpus.jsonl:1: not UTF-8" in err and not (tmp_path / "i.db").exists()


def test_eval_on_non_utf8_jsonl(capsys, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_bytes(b'{"question": "q1", "answer": "a"}\n{"question": "caf\xe9?", "answer": "b"}\n')
    err = one_line_error(capsys, ["eval", str(data), "--out", str(tmp_path / "run"), *NO_MODEL])
    assert "qa.jsonl:2: not UTF-8" in err


# -- index build -o ---------------------------------------------------------------------------------

def test_index_build_onto_a_file_that_is_not_sqlite(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Aardvarks dig burrows.")
    notes = tmp_path / "notes.db"
    notes.write_bytes(b"my precious notes, not a database\n" * 20)
    err = one_line_error(capsys, ["index", "build", str(tmp_path / "a.txt"), "-o", str(notes), "--no-progress"])
    assert f"{notes} is not a writable search index" in err
    assert notes.read_bytes() == b"my precious notes, not a database\n" * 20  # left as it was


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_index_build_onto_an_unwritable_path(capsys, tmp_path, where):
    (tmp_path / "a.txt").write_text("Aardvarks dig burrows.")
    out = tmp_path / "a.txt" / "i.db" if where == "under_a_file" else Path("/proc/splice-no-such/i.db")
    err = one_line_error(capsys, ["index", "build", str(tmp_path / "a.txt"), "-o", str(out), "--no-progress"])
    assert f"cannot create the search index {out}" in err


def test_index_build_of_a_folder_of_jsonl_indexes_it(capsys, tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"part{i}.jsonl").write_text(json.dumps({"title": f"T{i}", "text": f"doc {i}"}) + "\n")
    assert main(["index", "build", str(tmp_path / "docs"), "-o", str(tmp_path / "i.db"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("indexed 3 docs")


def test_index_build_of_nothing_fails_loudly(capsys, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "data.csv").write_text("a,b\n")
    err = one_line_error(capsys, ["index", "build", str(tmp_path / "docs"), "-o", str(tmp_path / "i.db"),
                                  "--no-progress"])
    assert "holds no corpus file" in err and not (tmp_path / "i.db").exists()


# -- eval ---------------------------------------------------------------------------------------------

def test_eval_out_pointing_at_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("a file\n")
    err = one_line_error(capsys, ["eval", "gen:arith", "--out", str(tmp_path / "taken"), *NO_MODEL])
    assert f"output directory {tmp_path / 'taken'} is a file" in err
    err = one_line_error(capsys, ["eval", "gen:arith", "--out", str(tmp_path / "taken" / "run"), *NO_MODEL])
    assert "it is a file" in err


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"{not json", "not a readable summary.json"),
    (b"\xff\xfe garbage", "not a readable summary.json"),
    (b"[1, 2]", "not an eval summary"),
    (b'{"modes": "none"}', "not an eval summary"),
    (b"[" * 100_000, "not a readable summary.json"),
])
def test_eval_compare_on_missing_or_corrupt_files(capsys, tmp_path, content, message):
    bad = tmp_path / "summary.json"
    if content is not None:
        bad.write_bytes(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"modes": {}}))
    err = one_line_error(capsys, ["eval", "--compare", str(good), str(bad)])
    assert f"{bad}: {message}" in err


def test_eval_null_answer_is_an_error_naming_the_line(capsys, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q1", "answer": "a"}\n\n{"question": "q2", "answer": null}\n')
    err = one_line_error(capsys, ["eval", str(data), "--out", str(tmp_path / "run"), *NO_MODEL])
    assert f"{data}:3: 'answer' is null" in err


def test_chat_skips_a_non_utf8_line_and_goes_on(tmp_path):
    # stdin is not a tty: the REPL reads bytes; a bad line is reported and the next one still runs
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "chat", "--tools", "none", "--max-new-tokens", "4",
                           "--json"], input=b"bad \xff line\nHi\n", capture_output=True, cwd=tmp_path, env=env,
                          timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in err, err
    assert "that line is not valid UTF-8 (byte 4)" in err
    turns = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    assert [t["question"] for t in turns] == ["Hi"]
