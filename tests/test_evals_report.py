"""The HTML report: trajectory blocks, escaping, and rendering + filtering in headless Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_evals_runner import calc_tool, times_script, write_times_data  # noqa: F401 (fixture)

from agent.backends.scripted import ScriptedBackend
from agent.evals import EvalConfig, run_eval
from agent.evals.report import compare_table, summary_table, trajectory_blocks

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found on PATH; "
                                    "install it (Debian: apt-get install chromium) to test the HTML report")


@pytest.fixture
def run_dir(tmp_path, calc_tool):  # noqa: F811
    data = write_times_data(tmp_path / "times.jsonl", 4)
    cfg = EvalConfig(data=str(data), out=str(tmp_path / "run"), modes=["none", "calc"])
    run_eval(cfg, backend=ScriptedBackend(times_script))
    return tmp_path / "run"


def episodes(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "episodes.jsonl").read_text().splitlines()]


def test_blocks_set_tool_calls_and_results_apart(run_dir):
    rec = next(r for r in episodes(run_dir) if r["mode"] == "calc" and r["id"] == "q0")
    blocks = trajectory_blocks(rec["trajectory"])
    assert [b["kind"] for b in blocks] == ["text", "call", "result", "text"]
    assert blocks[0]["text"].strip() == "Let me compute."
    assert blocks[1] == {"kind": "call", "tool": "calc", "text": "<calc_start>100*7<calc_end>", "error": False}
    assert blocks[2] == {"kind": "result", "text": "700", "error": False}
    assert "<answer_start>700<answer_end>" in blocks[3]["text"]


def test_malformed_calls_are_labelled():
    traj = {"syntax": "splice", "segments": [
        {"source": "prompt", "text": "p"}, {"source": "model", "text": "ok <search_start>x<code_end>"},
        {"source": "result", "text": "r"}, {"source": "model", "text": "done"}],
        "tool_calls": [{"tool": "", "arg": "<search_start>x<code_end>", "result": "error: bad close",
                        "error": True, "malformed": "mismatched"}]}
    kinds = [(b["kind"], b.get("tool"), b.get("error")) for b in trajectory_blocks(traj)]
    assert kinds == [("text", None, None), ("call", "malformed (mismatched)", True), ("result", None, True),
                     ("text", None, None)]


def test_report_is_self_contained_and_escaped(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "&lt;calc_start&gt;100*7&lt;calc_end&gt;" in html and "<calc_start>" not in html
    assert not re.search(r"""(src|href)=["']https?:""", html)  # nothing fetched from the network
    assert html.count('<section class="card"') == 8
    summary = json.loads((run_dir / "summary.json").read_text())
    if "plot" in summary["files"]:
        assert Path(summary["files"]["plot"]).stat().st_size > 1000 and "data:image/png;base64," in html


def test_terminal_tables_render(run_dir):
    from rich.console import Console

    summary = json.loads((run_dir / "summary.json").read_text())
    console = Console(width=160, record=True)
    console.print(summary_table(summary))
    console.print(compare_table(summary, summary))
    text = console.export_text()
    assert "calc" in text and "1.000" in text and "pass@1" in text


def test_headline_figures_are_whole_at_80_columns():
    """An 8-sample run with two modes on an 80-column terminal: every figure of both tables is in
    its row in full (no "0.2…"), and no line is wider than the terminal."""
    from rich.console import Console

    m = {"n_questions": 200, "accuracy": 0.23456, "em": 0.2, "f1": 0.3125, "pass@1": 0.25, "pass@2": 0.375,
         "pass@4": 0.4125, "pass@8": 0.5, "refusal_rate": 0.0125, "tool_calls_per_episode": 1.25,
         "malformed_rate": 0.03125, "tokens_per_question": 1234.56, "seconds_per_question": 12.34}
    summary = {"data": "data/gsm8k_test.jsonl", "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "samples": 8,
               "modes": {"none": m, "python+search": m}}
    console = Console(width=80, record=True)
    console.print(summary_table(summary))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80 and not any("…" in line for line in lines)
    headline = ["200", "0.235", "0.200", "0.312", "0.250", "0.375", "0.412", "0.500"]
    behaviour = ["0.013", "1.250", "0.031", "1234.6", "12.3"]
    for mode in summary["modes"]:
        rows = [line.split()[1:] for line in lines if line.split()[:1] == [mode]]
        assert rows == [headline, behaviour], (mode, rows)


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visible_cards(dom: str) -> list[dict[str, str]]:
    cards = []
    for attrs in re.findall(r"<section ([^>]*)>", dom):
        a = dict(re.findall(r'([\w-]+)="([^"]*)"', attrs))
        a["hidden"] = "hidden" if re.search(r"\bhidden\b", attrs) else ""
        cards.append(a)
    return [c for c in cards if not c["hidden"]]


@needs_chromium
def test_report_renders_and_filters_in_chromium(run_dir, tmp_path):
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copy(shot, run_dir / "report-screenshot.png")

    everything = visible_cards(chromium(tmp_path, "--dump-dom", url))
    assert len(everything) == 8
    wrong = chromium(tmp_path, "--dump-dom", url + "#outcome=wrong")
    assert {(c["data-mode"], c["data-outcome"]) for c in visible_cards(wrong)} == {("none", "wrong")}
    assert '<b id="shown">4</b>' in wrong
    picked = visible_cards(chromium(tmp_path, "--dump-dom", url + "#family=even&mode=calc"))
    assert sorted(c["id"] for c in picked) == ["q0--calc", "q2--calc"]
    assert all(c["data-outcome"] == "correct" for c in picked)
    bogus = visible_cards(chromium(tmp_path, "--dump-dom", url + "#family=nope"))
    assert len(bogus) == 8  # an unknown value falls back to "all"
