"""The rules of ARCHITECTURE.md, checked: no import cycle (lazy imports included) between
modules or between packages, no re-export shim or private name imported across modules, the
library never imports train, metrics never import generation, the top level stays small."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Collection

PACKAGE = Path(__file__).resolve().parents[1] / "gatebench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> gatebench modules it imports anywhere in its body (function-level too; not
    the ``if TYPE_CHECKING:`` imports, which never run)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test).endswith("TYPE_CHECKING")
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:      # annotations only: no import at run time
                continue
            found = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import submodule` imports the submodule, not what pkg/__init__ holds
                subs = [f"{node.module}.{a.name}" for a in node.names]
                found = [s for s in subs if s in modules]
                if len(found) < len(subs):
                    found.append(node.module)
            for target in found:
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_gatebench() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def package_of(module: str) -> str:
    """gatebench.metrics.fid -> gatebench.metrics; a top-level module is a package of its own."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]],
                  skip: Collection[tuple[str, str]] = ()) -> dict[str, set[str]]:
    """package -> packages its modules import (module edges in ``skip`` left out)."""
    packages: dict[str, set[str]] = {package_of(name): set() for name in graph}
    for name, targets in graph.items():
        for target in targets:
            if (name, target) not in skip and package_of(target) != package_of(name):
                packages[package_of(name)].add(package_of(target))
    return packages


# Module edges that close a package cycle from files other engineers are editing (issue 21
# part 2): each names the change that removes it. Once the edge is gone, delete its entry.
PENDING_EDGES: dict[tuple[str, str], str] = {}
# Files still holding a re-export shim or a cross-module private import, for the same reason.
PENDING_SHIMS: dict[str, str] = {}


def test_the_package_graph_folds_modules_into_packages() -> None:
    graph = {"gatebench.a.x": {"gatebench.b"}, "gatebench.b": {"gatebench.a.y"},
             "gatebench.a.y": set()}
    assert find_cycle(package_graph(graph)) == ["gatebench.a", "gatebench.b", "gatebench.a"]
    assert find_cycle(package_graph(graph, skip={("gatebench.b", "gatebench.a.y")})) is None


def test_no_import_cycle_between_packages() -> None:
    """A lazy import inside a function still ties two packages together: metrics must be
    importable without the protocol that imports metrics.spec, adapters/ without the reader."""
    graph = import_graph()
    for (source, target), change in PENDING_EDGES.items():
        assert target in graph.get(source, set()), (
            f"{source} no longer imports {target}: delete its PENDING_EDGES entry ({change})")
    cycle = find_cycle(package_graph(graph, skip=PENDING_EDGES))
    assert cycle is None, " -> ".join(cycle)


def _shims_and_private_imports(path: Path) -> list[str]:
    """``noqa: F401`` re-exports and ``from gatebench.x import _name`` in one file."""
    text = path.read_text(encoding="utf-8")
    found = [f"line {n}: a re-export (noqa: F401)" for n, line in
             enumerate(text.splitlines(), start=1) if "noqa: F401" in line]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gatebench"):
            found += [f"line {node.lineno}: private {alias.name} from {node.module}"
                      for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_names_come_from_their_owning_module() -> None:
    """No module re-exports another's names and none imports another's private name: a reader
    finds a name where it is defined, and a module's imports say what it really depends on."""
    problems = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        if "assets" in path.parts:
            continue
        found = _shims_and_private_imports(path)
        if where in PENDING_SHIMS:
            assert found, f"{where} is clean now: delete its PENDING_SHIMS entry"
        elif found:
            problems[where] = found
    assert not problems, problems


# The embedded trainer: installed as gatebench.train (its code in the top-level train/ folder,
# mapped by pyproject's package-dir), so its modules are not under PACKAGE and not in the graph.
TRAINER = "gatebench.train"


def trainer_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported name, inside a function) for each import of the trainer in one file: its package
    name, ``from gatebench import train``, or the old top-level ``train`` (never installed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        hits = [n for n in names if n in (TRAINER, "train") or n.startswith((TRAINER + ".", "train."))]
        found += [(hit, id(node) in lazy) for hit in hits[:1]]
    return found


def test_trainer_imports_are_found() -> None:
    """The finder below sees each spelling, and whether it sits inside a function."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.py"
        path.write_text("import gatebench.train.loop\nfrom gatebench import train\n"
                        "def f():\n    from train.cli import main\nfrom gatebench import gates\n")
        assert trainer_imports(path) == [("gatebench.train.loop", False),
                                         ("gatebench.train", False), ("train.cli", True)]


def test_dependency_rules() -> None:
    graph = import_graph()
    for name in graph:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        found = trainer_imports(path if path.is_file() else path.with_suffix("") / "__init__.py")
        # gatebench never imports the trainer, except the CLI's `train` subcommand, lazily
        allowed = name == "gatebench.cli"
        assert all(allowed and lazy and hit.startswith(TRAINER) for hit, lazy in found), (name, found)
    for name, targets in graph.items():
        if name.startswith("gatebench.metrics"):
            assert not {t for t in targets if t.startswith(("gatebench.generate", "gatebench.run",
                                                            "gatebench.adapters"))}, name


def test_top_level_holds_stages_and_subpackages() -> None:
    files = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(files) <= 20, files


def test_hashing_and_atomic_writes_import_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, gatebench.files; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
