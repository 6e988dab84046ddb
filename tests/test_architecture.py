"""The rules of ARCHITECTURE.md, checked: no import cycle (lazy imports included), the library
never imports train, metrics never import generation, the top level stays small."""
from __future__ import annotations

import ast
from pathlib import Path

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


def test_dependency_rules() -> None:
    graph = import_graph()
    for name, path in ((n, PACKAGE.parent / (n.replace(".", "/") + ".py")) for n in graph):
        source = path.read_text(encoding="utf-8") if path.is_file() else ""
        if name != "gatebench.cli.__init__" and not name.startswith("gatebench.cli"):
            assert "from train" not in source and "import train" not in source, name
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
