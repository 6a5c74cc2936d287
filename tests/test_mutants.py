"""The mutant catalogue (scripts/mutants/*.toml) stays runnable as the code moves: every mutant applies
exactly once, leaves code that still compiles (a syntax error would 'kill' it without any test
noticing the behaviour), and names test functions that exist. Running the mutants themselves is
``python scripts/mutate.py``; this only keeps the catalogue from going stale."""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)
MUTANTS = mutate.load_mutants(ROOT / "scripts" / "mutants")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("m", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_the_mutant_applies_compiles_and_names_real_tests(m, tmp_path):
    (tmp_path / m["file"]).parent.mkdir(parents=True)
    (tmp_path / m["file"]).write_text((ROOT / m["file"]).read_text())
    assert mutate.apply(tmp_path, m) is None
    if m["file"].endswith(".py"):
        compile((tmp_path / m["file"]).read_text(), m["file"], "exec")  # SyntaxError fails the test
    for node in m["tests"]:
        path, _, name = node.partition("::")
        assert (ROOT / path).is_file(), node
        if name:
            assert name.split("[")[0] in _test_names(ROOT / path), node
