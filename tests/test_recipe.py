"""``agent train recipe``: the shipped adapter's pipeline end to end on the real default model (the
``smoke`` recipe: a handful of examples, 2 SFT steps, one eval question per family), its resume, and
the card it writes. The real run's figures are in docs/training.md."""

import json

import pytest

pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from agent.errors import ConfigError  # noqa: E402
from agent.evals.tasks import HELDOUT, generate  # noqa: E402
from train.recipe import RECIPES, RecipeConfig, _sha256, data_config, run_recipe, sft_config  # noqa: E402
from train.recipe_eval import CompareConfig, compare_runs, heldout_pooled  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    state = run_recipe(RecipeConfig(recipe="smoke", output_dir=str(out), eval_base=False, progress=False))
    return out, state


def test_every_stage_runs_and_the_card_records_what_it_came_from(smoke):
    out, state = smoke
    assert all(k in state for k in ("data", "sft", "export", "eval", "card"))
    card = json.loads((out / "smollm2-tools.json").read_text())
    assert card["data"]["sha256"] == _sha256(out / "data" / "sft.jsonl")
    assert card["export"]["sha256"] == _sha256(out / "smollm2-tools.gguf")
    assert card["sft"]["config"]["lora_r"] == 4 and card["seed"] == 1000
    assert "--recipe smoke " in card["command"]  # the command on the card reproduces this run, not the default
    assert (out / "sft" / "loss.png").exists()
    # the stage's time is the SFT's own clock, which a resumed run carries on (tests/test_sft.py)
    assert state["sft"]["seconds"] == round(state["sft"]["summary"]["seconds"], 1)
    table = (out / "eval" / "eval.md").read_text()
    assert "| count | heldout |" in table and "| arith | train |" in table
    assert "| **held-out total** (heldout, fresh, fresh2, fresh3) |" in table  # the acceptance figure
    summary = json.loads((out / "eval" / "eval.json").read_text())
    # the eval ran the exported adapter through llama.cpp (its model id names the adapter)
    rec = json.loads((out / "eval" / "adapter" / "tasks-heldout" / "episodes.jsonl").read_text().splitlines()[0])
    assert "+smollm2-tools" in rec["trajectory"]["model"]
    assert set(summary["adapter"]["tasks-heldout"]) == {"python", "none"}


def test_training_data_holds_no_held_out_phrasing(smoke):
    out, _ = smoke
    rows = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    questions = {r["messages"][1]["content"] for r in rows}
    for fam in HELDOUT:
        held = {e.question for e in generate(fam, 400, 1000, "heldout")}
        held |= {e.question for e in generate(fam, 400, 1003, "heldout")}
        assert not questions & held, fam
    assert {r["family"] for r in rows} >= {"arith", "count", "count_text", "plain", "identity"}


def test_a_rerun_skips_finished_stages_and_a_changed_data_file_is_refused(smoke):
    out, state = smoke
    again = run_recipe(RecipeConfig(recipe="smoke", output_dir=str(out), eval_base=False, progress=False))
    assert again["export"]["sha256"] == state["export"]["sha256"]
    assert again["sft"]["seconds"] == state["sft"]["seconds"]  # skipped, not rerun
    data = out / "data" / "sft.jsonl"
    data.write_text(data.read_text() + "\n")
    with pytest.raises(ConfigError, match="changed since the data stage"):
        run_recipe(_redo(out, "sft"))


def _redo(out, stage):
    """A config that reruns ``stage`` (its record dropped from recipe.json)."""
    state = json.loads((out / "recipe.json").read_text())
    state.pop(stage)
    (out / "recipe.json").write_text(json.dumps(state))
    return RecipeConfig(recipe="smoke", output_dir=str(out), stages=[stage], progress=False)


def test_bad_recipe_names_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown recipe"):
        RecipeConfig(recipe="huge")
    with pytest.raises(ConfigError, match="unknown stages"):
        RecipeConfig(stages="data,deploy")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_valid_stage_configs(name, tmp_path):
    # a misspelt or out-of-range setting in a recipe fails here, not an hour into its run
    cfg = RecipeConfig(recipe=name, output_dir=str(tmp_path), gsm8k=str(tmp_path / "gsm8k.jsonl"),
                       multihop=str(tmp_path))
    data, sft = data_config(cfg), sft_config(cfg)
    for key, value in RECIPES[name]["data"].items():
        assert getattr(data, key) == value
    for key, value in RECIPES[name]["sft"].items():
        assert getattr(sft, key) == value


def test_the_default_recipe_is_the_one_the_shipped_adapter_was_trained_by():
    # `agent train recipe --install` must reproduce agent/adapters/: a changed default needs a new adapter
    from agent.backends.models import shipped_adapter

    adapter = shipped_adapter()
    assert adapter is not None
    card = json.loads(adapter.with_suffix(".json").read_text())
    assert card["recipe_spec"] == json.loads(json.dumps(RECIPES["default"]))
    assert card["command"].startswith("agent train recipe --gsm8k")  # no --recipe: the default's


def _cells(md, label):
    """The cells after ``label`` in the compare table's row that starts with it."""
    row = next(line for line in md.splitlines() if line.startswith(f"| {label}"))
    return [c.strip() for c in row.strip("|").split("|")[1:]]


def test_compare_diff_lists_each_held_out_question_answered_differently(smoke, tmp_path):
    """``--diff``: run B is run A's eval with one held-out answer's correctness flipped; the listing
    holds that question, once, on the side that got it right, and nothing else."""
    import shutil

    out, _ = smoke
    shutil.copytree(out / "eval", tmp_path / "b" / "eval")
    path = tmp_path / "b" / "eval" / "adapter" / "tasks-fresh2" / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    k = next(i for i, r in enumerate(rows) if r["mode"] == "python")
    rows[k]["correct"] = not rows[k]["correct"]
    rows[k]["pred"] = "a | pipe"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = compare_runs(CompareConfig(runs=[str(out), str(tmp_path / "b")], diff=True))
    listed = [line for line in md.splitlines() if line.startswith("| fresh")]
    assert len(listed) == 1 and listed[0].startswith(f"| fresh2 | {rows[k]['family']} |"), md
    assert "a \\| pipe" in listed[0]  # a pipe in an answer does not break the row
    b_right = rows[k]["correct"]
    assert f"Right only in A: {0 if b_right else 1}; right only in B: {1 if b_right else 0}." in md
    assert "Right only in A: 0; right only in B: 0." in compare_runs(CompareConfig(runs=[str(out)] * 2, diff=True))
    with pytest.raises(ConfigError, match="two runs"):
        CompareConfig(runs=[str(out)], diff=True)
    with pytest.raises(ConfigError, match="no episodes"):
        compare_runs(CompareConfig(runs=[str(out), str(out / "eval" / "eval.json")], diff=True))
    path.write_text("{not json\n")
    with pytest.raises(ConfigError, match="not readable episodes"):
        compare_runs(CompareConfig(runs=[str(out), str(tmp_path / "b")], diff=True))


def test_compare_counts_each_held_out_set_and_leaves_out_sets_asked_differently(smoke, tmp_path):
    out, _ = smoke
    a = json.loads((out / "eval" / "eval.json").read_text())
    held = a["adapter"]["tasks-heldout"]["python"]
    fam = sorted(held["by_family"])[0]
    b = json.loads(json.dumps(a))  # run B: one more held-out question of `fam` right, or one fewer
    flipped = 1.0 - held["by_family"][fam]
    b["adapter"]["tasks-heldout"]["python"]["by_family"][fam] = flipped
    b["adapter"]["tasks-fresh"]["python"]["family_n"] = {f: 2 for f in held["by_family"]}  # other questions
    (tmp_path / "b.json").write_text(json.dumps(b))
    md = compare_runs(CompareConfig(runs=[str(out), str(tmp_path / "b.json")]))
    k = len(held["by_family"])
    correct = round(sum(held["by_family"].values()))
    step = 1 if flipped else -1
    assert _cells(md, "held-out `heldout`") == [f"{correct}/{k} ({correct / k:.3f})",
                                                f"{correct + step}/{k} ({(correct + step) / k:.3f})"]
    assert _cells(md, "held-out `fresh`") == ["-", "-"]  # not the same questions: out of the totals
    total_row = next(line for line in md.splitlines() if "held-out total" in line)
    assert "(heldout, fresh2, fresh3)" in total_row
    pooled_a, pooled_b = (heldout_pooled(s["adapter"], ("heldout", "fresh2", "fresh3")) for s in (a, b))
    assert pooled_b[fam][0] - pooled_a[fam][0] == step and pooled_b[fam][1] == pooled_a[fam][1] == 3
    assert _cells(md, f"held-out {fam}") == [f"{c}/3 ({c / 3:.3f})" for c in (pooled_a[fam][0], pooled_b[fam][0])]
    assert compare_runs(CompareConfig(runs=[str(out)], out=str(tmp_path / "t.md"))) == (tmp_path / "t.md").read_text()
    with pytest.raises(ConfigError, match="cannot write"):
        compare_runs(CompareConfig(runs=[str(out)], out=str(tmp_path / "no" / "t.md")))
    with pytest.raises(ConfigError, match="no eval.json"):
        compare_runs(CompareConfig(runs=[str(tmp_path / "missing")]))
    (tmp_path / "bad.json").write_text('{"adapter": {"tasks-train": {"python": 5}}}')
    with pytest.raises(ConfigError, match="not recipe eval summaries"):
        compare_runs(CompareConfig(runs=[str(tmp_path / "bad.json")]))
