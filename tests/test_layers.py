"""Layers point one way and modules import without circles, read from the source with ``ast``.

    sandbox (imports nothing of the project) <- tools <- agent <- train;  prompts: a leaf anyone imports

Every import of a project module counts: at module level, under ``if TYPE_CHECKING:`` and inside
functions. An import inside a function must say why on its line: ``# lazy: heavy (...)`` (it defers an
optional heavy dependency, so ``import agent`` works without torch) or ``# lazy: cycle (...)`` (it
breaks a circle that ``FUNCTION_LOCAL_CYCLES`` below lists). A new circle or an unexplained lazy
import fails here; so does an allow-list entry that no longer applies.
"""

from __future__ import annotations

import ast
import collections
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"sandbox": 0, "tools": 1, "agent": 2, "train": 3}
LEAVES = ("prompts",)
LAZY_TAG = re.compile(r"#\s*lazy:\s*(heavy|cycle)\b")

# Circles that exist only through a function-local import: (importer, imported) of the import that
# closes each one, with why the two modules need each other. Keep it short; a new entry needs a reason.
FUNCTION_LOCAL_CYCLES = {
    ("tools.base", "tools.mcp"):
        "get_tools('mcp:CMD') builds MCPTools, and an MCPTool is a tools.base.Tool",
    ("agent.backends", "agent.backends.openai"):
        "load_backend picks the openai backend by name; its load_tokenizer('default') needs default_model_path",
    ("agent.backends.openai", "agent.backends"): "the same circle, from the other side",
    ("agent.evals.data", "agent.evals.tasks"):
        "a letters dataset row is phrased by tasks.count_question; tasks builds its items as data.Example",
    ("train.data", "train.identity"):
        "identity examples are built from data's Plan helpers, and data mixes them into its plans",
    ("train.cli", "train.recipe"): "the CLI registers `agent train recipe`",
    ("train.recipe", "train.cli"): "the recipe's data stage reuses the CLI's _data_rows",
}

# Function-local project imports from before the rule, in files other people were editing when it
# came in: (importer, imported) -> how many statements. Shrink it as they get a tag or move to the top.
UNTAGGED_BEFORE_THE_RULE = collections.Counter({
    ("agent.backends", "agent.backends.batched"): 1,
    ("agent.backends", "agent.backends.llama_cpp"): 1,
    ("agent.backends", "agent.backends.openai"): 1,
    ("agent.backends", "agent.backends.transformers"): 1,
    ("train.cli", "agent.errors"): 1,
    ("train.cli", "tools.base"): 1,
    ("train.cli", "tools.search"): 1,
    ("train.cli", "train.data"): 4,
    ("train.cli", "train.export"): 3,
    ("train.cli", "train.probe"): 3,
    ("train.cli", "train.recipe"): 2,
    ("train.cli", "train.sft"): 2,
    ("train.data", "agent.backends.scripted"): 1,
    ("train.data", "agent.evals.data"): 2,
    ("train.data", "agent.evals.metrics"): 2,
    ("train.data", "agent.evals.tasks"): 2,
    ("train.data", "agent.runtime"): 1,
    ("train.data", "train.identity"): 1,
    ("train.recipe", "agent"): 1,
    ("train.recipe", "agent.backends"): 2,
    ("train.recipe", "train.cli"): 1,
    ("train.recipe", "train.data"): 1,
    ("train.recipe", "train.export"): 1,
    ("train.recipe", "train.recipe_eval"): 1,
    ("train.recipe", "train.sft"): 2,
    ("train.sft", "agent.backends"): 2,
    ("train.sft", "agent.backends.transformers"): 1,
    ("train.sft", "train.data"): 1,
})


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    local: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``
    line: int
    comment: str

    def where(self) -> str:
        return f"{self.src}:{self.line} imports {self.dst}"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg in (*LAYERS, *LEAVES):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def _project_module(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, mod: str, is_pkg: bool, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join([*pkg, base] if base else pkg)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    found = (_project_module(n, mods) for n in names)
    return sorted({t for t in found if t and t != mod})


def _module_edges(mod: str, path: Path, is_pkg: bool, mods: dict) -> list[Edge]:
    src = path.read_text(encoding="utf-8")
    comments = {t.start[0]: t.string for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT}
    out: list[Edge] = []

    def visit(node: ast.AST, local: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, local, True)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                note = " ".join(comments.get(n, "") for n in range(child.lineno, child.end_lineno + 1))
                for dst in _targets(child, mod, is_pkg, mods):
                    out.append(Edge(mod, dst, local, type_only, child.lineno, note))
            visit(child, local, type_only)

    visit(ast.parse(src, filename=str(path)), False, False)
    return out


def _edges() -> list[Edge]:
    mods = _modules()
    return [e for mod, (path, is_pkg) in mods.items() for e in _module_edges(mod, path, is_pkg, mods)]


EDGES = _edges()


def _layer(mod: str) -> str:
    return mod.split(".")[0]


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = collections.defaultdict(set)
    for e in edges:
        graph[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _reaches(edges: list[Edge], start: str, goal: str) -> bool:
    graph = collections.defaultdict(set)
    for e in edges:
        graph[e.src].add(e.dst)
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_the_walk_sees_the_project():
    srcs = {e.src for e in EDGES}
    assert {"sandbox.session", "tools.base", "agent.runtime", "train.sft"} <= srcs
    assert any(e.local for e in EDGES) and any(e.type_only for e in EDGES)


def test_no_package_imports_a_higher_layer():
    upward = [e.where() for e in EDGES
              if _layer(e.src) in LAYERS and _layer(e.dst) in LAYERS
              and LAYERS[_layer(e.dst)] > LAYERS[_layer(e.src)]]
    assert not upward, "imports that point up (sandbox < tools < agent < train):\n" + "\n".join(upward)


def test_prompts_is_a_leaf():
    assert not [e.where() for e in EDGES if _layer(e.src) in LEAVES]


def test_no_cycle_among_module_level_imports():
    cycles = _cycles([e for e in EDGES if not e.local and not e.type_only])
    assert not cycles, f"module-level import circles: {cycles}"


def test_function_local_imports_say_why():
    untagged = collections.Counter()
    where = []
    for e in {(e.src, e.line, e.dst): e for e in EDGES if e.local}.values():
        if not LAZY_TAG.search(e.comment):
            untagged[(e.src, e.dst)] += 1
            where.append(e.where())
    new = untagged - UNTAGGED_BEFORE_THE_RULE
    assert not new, ("a function-local project import needs '# lazy: heavy (...)' or '# lazy: cycle (...)' "
                     "on its line, or a move to the top of the module:\n" + "\n".join(
                         w for w in sorted(where) if any(w.startswith(f"{s}:") and w.endswith(f" {d}")
                                                         for s, d in new)))
    stale = UNTAGGED_BEFORE_THE_RULE - untagged
    assert not stale, f"tagged or moved since: shrink UNTAGGED_BEFORE_THE_RULE by {dict(stale)}"


def test_function_local_cycles_are_the_listed_ones():
    runtime = [e for e in EDGES if not e.type_only]
    closing = {(e.src, e.dst) for e in runtime if e.local and _reaches(runtime, e.dst, e.src)}
    assert closing == set(FUNCTION_LOCAL_CYCLES), (
        f"new: {sorted(closing - set(FUNCTION_LOCAL_CYCLES))}; gone: {sorted(set(FUNCTION_LOCAL_CYCLES) - closing)}")
    for e in runtime:
        if e.local and (e.src, e.dst) in FUNCTION_LOCAL_CYCLES and (e.src, e.dst) not in UNTAGGED_BEFORE_THE_RULE:
            assert "lazy: cycle" in e.comment, f"{e.where()}: say '# lazy: cycle (...)' on the line"


def test_agent_errors_re_exports_each_layers_own_classes():
    import agent.errors
    import sandbox.errors
    import tools.errors

    owners = {"ConfigError": sandbox.errors, "MissingDependency": sandbox.errors, "SandboxError": sandbox.errors,
              "SpliceError": sandbox.errors, "require": sandbox.errors, "ToolError": tools.errors,
              "SearchError": tools.errors, "DataError": tools.errors, "ModelError": tools.errors,
              "ModelNotFound": agent.errors}
    assert set(agent.errors.__all__) == set(owners)
    for name, owner in owners.items():
        assert getattr(agent.errors, name) is getattr(owner, name), name
    bases = {"ConfigError": ValueError, "MissingDependency": ImportError, "ToolError": ValueError,
             "DataError": ValueError, "ModelNotFound": FileNotFoundError}
    for name, extra in bases.items():
        assert issubclass(getattr(agent.errors, name), agent.errors.SpliceError), name
        assert issubclass(getattr(agent.errors, name), extra), name
    assert issubclass(agent.errors.ModelNotFound, agent.errors.ModelError)
    for name in ("SandboxError", "SearchError", "ModelError"):
        assert issubclass(getattr(agent.errors, name), agent.errors.SpliceError)
