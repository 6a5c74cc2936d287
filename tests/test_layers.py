"""Layers point one way and modules import without circles, read from the source with ``ast``.

    sandbox (imports nothing of the project) <- tools <- agent <- train;  prompts: a leaf anyone imports

Every import of a project module counts: at module level, under ``if TYPE_CHECKING:`` and inside
functions. There is no circle of any kind, between packages or inside one, function-local imports
included; an import inside a function must say why on its line, ``# lazy: heavy (...)``: it defers an
optional heavy dependency, so ``import agent`` works without torch. No allow-lists.
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
LAZY_TAG = re.compile(r"#\s*lazy:\s*heavy\b")

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
    untagged = sorted({e.where() for e in EDGES if e.local and not LAZY_TAG.search(e.comment)})
    assert not untagged, ("a function-local project import must defer an optional heavy dependency and say "
                          "so on its line ('# lazy: heavy (torch)'), or move to the top of the module:\n"
                          + "\n".join(untagged))


def test_no_cycle_at_all_function_local_imports_included():
    cycles = _cycles(list(EDGES))
    assert not cycles, f"import circles (function-local and TYPE_CHECKING imports count): {cycles}"


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
