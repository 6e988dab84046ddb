"""The rules of ARCHITECTURE.md, checked over gatebench/, the trainer (train/) and bench/ by
tests/layering.py: no import cycle (lazy imports included) between modules or between packages; a
name imported from the module that defines it (no ``X as X`` re-export, ``__all__`` of imported
names, module ``__getattr__`` facade, alias block or ``noqa: F401`` shim; no private name across
modules); the library never imports the trainer, bench/ never imports tests/, metrics never import
generation, the top level stays small. ``test_the_checker_catches_each_planted_violation`` breaks
each rule in a throwaway tree, so a checker that silently passes fails there."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.layering import (
    PACKAGE,
    SOURCES,
    TESTS,
    TRAINER,
    find_cycle,
    find_modules,
    import_graph,
    layering_problems,
    package_graph,
    trainer_imports,
)

# Modules still breaking a rule because another change owns the fix: module -> that change. The
# test fails once the module is clean, so each entry is deleted with its fix.
PENDING: dict[str, str] = {
}
# Module edges that close a package cycle from files other engineers are editing: each names the
# change that removes it. Once the edge is gone, delete its entry.
PENDING_EDGES: dict[tuple[str, str], str] = {}


def test_names_come_from_their_owning_module() -> None:
    """No module re-exports another's names and none imports another's private name: a reader
    finds a name where it is defined, and a module's imports say what it really depends on."""
    problems = layering_problems(SOURCES, TESTS)
    for module, change in PENDING.items():
        assert problems.pop(module, None), f"{module} is clean now: delete its PENDING entry ({change})"
    assert not problems, problems


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_package_graph_folds_modules_into_packages() -> None:
    graph = {"gatebench.a.x": {"gatebench.b"}, "gatebench.b": {"gatebench.a.y"},
             "gatebench.a.y": set(), f"{TRAINER}.world.data": {"gatebench.b"}}
    assert find_cycle(package_graph(graph)) == ["gatebench.a", "gatebench.b", "gatebench.a"]
    assert find_cycle(package_graph(graph, skip={("gatebench.b", "gatebench.a.y")})) is None
    assert TRAINER in package_graph(graph)       # the trainer is one package, however deep


def test_no_import_cycle_between_packages() -> None:
    """A lazy import inside a function still ties two packages together: metrics must be
    importable without the protocol that imports metrics.spec, adapters/ without the reader, and
    the trainer's CLI without gatebench.cli (whose `train` subcommand imports the trainer)."""
    graph = import_graph()
    for (source, target), change in PENDING_EDGES.items():
        assert target in graph.get(source, set()), (
            f"{source} no longer imports {target}: delete its PENDING_EDGES entry ({change})")
    cycle = find_cycle(package_graph(graph, skip=PENDING_EDGES))
    assert cycle is None, " -> ".join(cycle)


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_catches_each_planted_violation(tmp_path: Path) -> None:
    """Each rule, broken once in a throwaway tree, is reported (so the checks above cannot pass
    by seeing nothing), and the clean module beside them is not."""
    _plant(tmp_path / "pkg", {
        "__init__.py": "",
        "owner.py": "VALUE = 1\n_SECRET = 2\n\n\ndef helper() -> int:\n    return VALUE\n",
        "clean.py": "from pkg import owner\nfrom pkg.owner import VALUE, helper\n\n\n"
                    "def f() -> int:\n    return owner.VALUE + helper() + VALUE\n",
        "as_same.py": "from pkg.owner import VALUE as VALUE\n",
        "module_as_same.py": "import pkg as pkg\n",
        "shim.py": "from pkg.owner import VALUE  # noqa: F401\n",
        "all_list.py": "from pkg.owner import VALUE, helper\n__all__ = ['VALUE', 'helper']\n",
        "lazy_facade.py": "def __getattr__(name: str) -> int:\n    return 1\n",
        "alias_block.py": "from pkg import owner\nfrom pkg.owner import helper\n\n"
                          "OLD_VALUE = owner.VALUE      # kept here under its old name\n"
                          "old_helper = helper\n",
        "private.py": "from pkg.owner import _SECRET\n",
        "private_attr.py": "import pkg.owner\n\n\ndef f() -> int:\n    return pkg.owner._SECRET\n",
        "via_importer.py": "from pkg.all_list import helper\nfrom pkg import all_list\n"
                           "x = all_list.VALUE\n",
        "a/__init__.py": "", "a/one.py": "def f() -> None:\n    import pkg.b.x\n",
        "a/two.py": "", "b/__init__.py": "", "b/x.py": "from pkg.a import two\n",
    })
    _plant(tmp_path / "bench", {"__init__.py": "",
                                "tool.py": "def f() -> None:\n    from tests.helpers import build\n"})
    _plant(tmp_path / "tests", {"__init__.py": "", "helpers.py": "def build() -> None:\n    pass\n",
                                "test_x.py": "from pkg.all_list import VALUE\n"
                                             "from pkg.owner import _SECRET\n"})
    sources = {"pkg": tmp_path / "pkg", "bench": tmp_path / "bench"}
    problems = layering_problems(sources, {"tests": tmp_path / "tests"})
    expected = {
        "pkg.as_same": "re-export VALUE as VALUE", "pkg.module_as_same": "re-export pkg as pkg",
        "pkg.shim": "noqa: F401", "pkg.all_list": "__all__ re-exports VALUE",
        "pkg.lazy_facade": "module __getattr__", "pkg.alias_block": "alias OLD_VALUE",
        "pkg.private": "private _SECRET from pkg.owner", "pkg.private_attr": "private pkg.owner._SECRET",
        "pkg.via_importer": "helper from pkg.all_list, which does not define it",
        "bench.tool": "imports tests.helpers",
        "tests.test_x": "VALUE from pkg.all_list, which does not define it",
    }
    for module, message in expected.items():
        assert any(message in line for line in problems.get(module, [])), (module, problems)
    assert "alias old_helper" in " ".join(problems["pkg.alias_block"])
    assert "pkg.all_list.VALUE" in " ".join(problems["pkg.via_importer"])
    assert set(problems) == set(expected), problems          # clean.py, owner.py: nothing
    assert not [p for p in problems["tests.test_x"] if "_SECRET" in p]   # tests may test privates
    graph = import_graph(find_modules(sources))
    assert find_cycle(graph) is None                                   # no module cycle ...
    assert find_cycle(package_graph(graph)) == ["pkg.a", "pkg.b", "pkg.a"]  # ... a lazy package one


def test_trainer_imports_are_found(tmp_path: Path) -> None:
    """The finder below sees each spelling, and whether it sits inside a function."""
    path = tmp_path / "m.py"
    package, _, last = TRAINER.rpartition(".")
    path.write_text(f"import {TRAINER}.loop\nfrom {package} import {last}\n"
                    "def f():\n    from train.cli import main\nfrom gatebench import gates\n")
    assert trainer_imports(path) == [(f"{TRAINER}.loop", False), (TRAINER, False),
                                     ("train.cli", True)]


def test_dependency_rules() -> None:
    modules = find_modules(SOURCES)
    graph = import_graph(modules)
    for name, path in modules.items():
        if name.startswith(("bench", TRAINER)):
            continue
        # gatebench never imports the trainer, except the CLI's `train` subcommand, lazily
        allowed = name == "gatebench.cli"
        found = trainer_imports(path)
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

    code = "import sys, gatebench.files; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
