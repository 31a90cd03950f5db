"""House rules that a linter can check: ruff is clean, helpers never use ``assert``, imports go one
way between helpers' packages, and the tests keep their layout (no test module imports another,
conftest.py files hold fixtures and hooks only)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from support import REPO


def test_ruff_is_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_helpers_raise_errors_a_learner_understands_never_assert():
    found = []
    for path in pathlib.Path(REPO, "helpers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, "assert in helpers (raise ValueError/RuntimeError with the numbers): " + ", ".join(found)


def _module_graph() -> dict[str, set[str]]:
    """helpers' modules and the helpers modules each one imports (at any depth of its code)."""
    root = pathlib.Path(REPO)
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "helpers").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                deps.add(base)
                deps |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_import_circles_in_helpers():
    graph = _module_graph()
    # a package's __init__ may import its own submodules (re-exports); nothing else may loop
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in edges[m]:
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


# Which helpers package may import which (DESIGN.md, "one direction of imports"): the notebook's
# cluster sits on top, the ranks' code below it, the pure pieces at the bottom.  A package not
# listed here must be added, with the packages it may use.
ALLOWED = {
    "common": set(),                                        # pure standard library
    "data": {"common", "tp"},
    "costmodel": {"common"},                                # pure Python, no torch
    "tp": {"common"},                                       # TP math: torch only
    "models": {"common", "tp", "measure"},                  # ParallelBlock times its matmuls (measure.timer)
    "measure": {"common", "tp", "engine", "costmodel"},     # bytes from the one formula
    "engine": {"common", "reference"},                      # never the notebook's cluster
    "reference": {"common", "engine", "viz"},               # engine: DTensor descriptions, by reference
    "viz": {"common", "reference", "tp", "costmodel"},
    "exercises": {"common", "engine", "reference", "tp", "models"},
    "cluster": {"common", "engine", "reference"},
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_imports_between_packages_go_one_way():
    wrong = []
    for module, deps in _module_graph().items():
        src = _package(module)
        if src is None:  # helpers/__init__.py: the lazy connect()
            continue
        for dep in sorted(deps):
            dst = _package(dep)
            if src not in ALLOWED:
                wrong.append(f"{module}: package {src!r} is not in ALLOWED")
            elif dst is not None and dst != src and dst not in ALLOWED[src]:
                wrong.append(f"{module} imports {dep} ({src} -> {dst})")
    assert not wrong, "imports against the direction of DESIGN.md:\n" + "\n".join(wrong)


def test_common_is_pure_standard_library():
    for path in pathlib.Path(REPO, "helpers", "common").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad = [n for n in names if n.split(".")[0] not in sys.stdlib_module_names]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}: helpers/common is standard library only"


# ------------------------------------------------------------------ the tests' own layout
def _tests() -> pathlib.Path:
    return pathlib.Path(REPO, "tests")


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_test_module_imports_another():
    """Shared code lives in tests/support (or beside its users, for engine and torchrun code)."""
    test_modules = {p.stem for p in _tests().rglob("test_*.py")}
    wrong = []
    for path in sorted(_tests().rglob("*.py")):
        for name in sorted(_imported_modules(ast.parse(path.read_text()))):
            if name.split(".")[0] in test_modules or name.split(".")[0] == "conftest":
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "a test module imported as a library (move what it shares to tests/support):\n" + "\n".join(wrong)


def test_conftest_files_hold_fixtures_and_hooks_only():
    wrong = []
    for path in sorted(_tests().rglob("conftest.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
                if not (fixture or node.name.startswith("pytest_")):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not wrong, "not a fixture or hook (move it to tests/support):\n" + "\n".join(wrong)


def test_the_notebook_side_of_connect_imports_no_torch():
    """connect() runs while every engine imports torch: the notebook must not import it too on a
    few cores (it slowed start-up by ~0.8 s on 2 cores, measured with benchmarks/bench_cluster.py)."""
    code = "import sys, helpers, helpers.cluster.tpcluster; sys.exit('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, "importing helpers.cluster.tpcluster imported torch" + out.stderr
