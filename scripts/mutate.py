"""Mutation check: break the code on purpose and see which tests notice.

Each ``scripts/mutants/*.toml`` file lists mutants::

    [[mutant]]
    name = "grpo-negated-advantages"          # unique, kebab-case
    file = "train/grpo.py"                    # relative to the repo root
    old = "adv = (r - mean) / (std + eps)"    # must occur exactly once in the file
    new = "adv = -(r - mean) / (std + eps)"
    tests = ["tests/test_grpo_math.py::test_update_direction"]   # pytest node ids that must go red

For every mutant the script copies the tracked tree into a temporary directory, applies the one
replacement there (the working tree is never touched), runs the named tests against the copy and
reports KILLED (a test failed or timed out, as it should), SURVIVED (every test passed: the claim is
untested) or NOT-RUN (pytest could not collect or run the tests, e.g. the mutant broke the syntax or a
node id is stale: that proves nothing). Exit status 1 if any mutant was not killed or not applied.

    python scripts/mutate.py                 # all mutants
    python scripts/mutate.py -k grpo         # names containing "grpo"
    python scripts/mutate.py --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def load_mutants(folder: Path) -> list[dict]:
    mutants, seen = [], set()
    for path in sorted(folder.glob("*.toml")):
        for m in tomllib.loads(path.read_text()).get("mutant", []):
            missing = {"name", "file", "old", "new", "tests"} - set(m)
            if missing:
                raise SystemExit(f"{path.name}: mutant {m.get('name', '?')} lacks {sorted(missing)}")
            if m["name"] in seen:
                raise SystemExit(f"{path.name}: duplicate mutant name {m['name']}")
            seen.add(m["name"])
            mutants.append({**m, "source": path.name})
    return mutants


def tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def apply(tree: Path, m: dict) -> str | None:
    path = tree / m["file"]
    if not path.is_file():
        return f"no file {m['file']}"
    text = path.read_text()
    count = text.count(m["old"])
    if count != 1:
        return f"'old' occurs {count} times in {m['file']} (must be exactly once)"
    path.write_text(text.replace(m["old"], m["new"]))
    return None


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, "timed out"
    return rc, time.monotonic() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutant's test run")
    ap.add_argument("--baseline", action="store_true", help="also run each mutant's tests unmutated first")
    args = ap.parse_args(argv)
    mutants = [m for m in load_mutants(ROOT / "scripts" / "mutants") if args.k in m["name"]]
    if args.list:
        for m in mutants:
            print(f"{m['name']:45s} {m['file']:35s} {' '.join(m['tests'])}")
        return 0
    bad = 0
    with tempfile.TemporaryDirectory(prefix="splice-mutants-") as tmp:
        base = Path(tmp) / "base"
        tracked_copy(base)
        for m in mutants:
            tree = Path(tmp) / m["name"]
            shutil.copytree(base, tree, symlinks=True)
            if args.baseline:
                rc, _, out = run_tests(tree, m["tests"], args.timeout)
                if rc != 0:
                    print(f"BROKEN    {m['name']}: its tests fail without the mutation\n{out[-1500:]}")
                    bad += 1
                    continue
            err = apply(tree, m)
            if err:
                print(f"NOT-APPLIED {m['name']}: {err}")
                bad += 1
                continue
            rc, dt, out = run_tests(tree, m["tests"], args.timeout)
            # pytest exits 1 when a test failed; 2-4 mean the tests never ran (a mutant that breaks
            # the import or the syntax shows nothing about what the tests check); -1 is a timeout
            verdict = {0: "SURVIVED", 5: "SURVIVED", 1: "KILLED  ", -1: "KILLED  "}.get(rc, "NOT-RUN ")
            bad += verdict != "KILLED  "
            last = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
            print(f"{verdict}  {m['name']:45s} {dt:6.1f}s  {last[0][:90]}", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    print(f"{len(mutants)} mutants, {len(mutants) - bad} killed, {bad} survived, not run or not applied")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
