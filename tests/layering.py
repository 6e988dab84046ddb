"""The layering checker behind tests/test_architecture.py: which modules exist (gatebench/, the
trainer's train/ folder under its import name, bench/, tests/), what each imports (lazy imports
included), and where a module breaks "a name is imported from the module that defines it"."""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Collection, Iterator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gatebench"


def _trainer_name() -> str:
    """The trainer's import name: whatever pyproject's package-dir maps the train/ folder to."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return next((name for name, folder in setup.get("package-dir", {}).items()
                 if folder.rstrip("/") == "train"), "train")


# The embedded trainer: its code in the top-level train/ folder, mapped by pyproject's package-dir.
TRAINER = _trainer_name()
# Import name -> folder of every tree the rules hold for; tests/ only for where names come from.
SOURCES: dict[str, Path] = {"gatebench": PACKAGE, TRAINER: ROOT / "train", "bench": ROOT / "bench"}
TESTS: dict[str, Path] = {"tests": ROOT / "tests"}


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    """One file's syntax tree, parsed once per test session (the trees are only read)."""
    return ast.parse(path.read_text(encoding="utf-8"))


_NODES: dict[int, list[ast.AST]] = {}


def nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of a parsed tree (``parse`` keeps the trees alive, so their ids are stable)."""
    if id(tree) not in _NODES:
        _NODES[id(tree)] = list(ast.walk(tree))
    return _NODES[id(tree)]


def find_modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each source folder (assets left out)."""
    modules: dict[str, Path] = {}
    for prefix, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "assets" in parts:
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((*prefix.split("."), *parts))] = path
    return modules


def _typing_only(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:`` (imports that never run)."""
    return {id(n) for block in nodes(tree) if isinstance(block, ast.If)
            and ast.unparse(block.test).endswith("TYPE_CHECKING") for n in ast.walk(block)}


def _imports(tree: ast.Module, modules: Collection[str]
             ) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """(node, module) for each project module an import statement loads (``from pkg import sub``
    loads the submodule, not what pkg/__init__ holds); run-time imports only."""
    skip = _typing_only(tree)
    for node in nodes(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from ((node, a.name) for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found = [s for s in subs if s in modules]
            if len(found) < len(subs) and node.module in modules:
                found.append(node.module)
            yield from ((node, m) for m in found)


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its body (function-level too; not the
    ``if TYPE_CHECKING:`` imports, which never run)."""
    modules = find_modules(SOURCES) if modules is None else modules
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for _, target in _imports(parse(path), modules) if target != name}
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


def package_of(module: str, packages: Collection[str] = (TRAINER,)) -> str:
    """gatebench.metrics.fid -> gatebench.metrics; a top-level module is a package of its own;
    the trainer (``packages``) is one package however deep its modules sit."""
    for package in packages:
        if module == package or module.startswith(package + "."):
            return package
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


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import: the module body and the blocks of its if / try / with."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for block in (stmt.body, getattr(stmt, "orelse", []), getattr(stmt, "finalbody", []),
                          *(h.body for h in getattr(stmt, "handlers", []))):
                yield from _top_level(block)


def _bound(target: ast.AST) -> Iterator[str]:
    yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))


def module_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(defined, imported): the names a module binds at its top level by a definition (def, class,
    assignment) and by an import."""
    defined: set[str] = set()
    imported: set[str] = set()
    for stmt in _top_level(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            defined.update(n for t in stmt.targets for n in _bound(t))
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign, ast.For)):
            defined.update(_bound(stmt.target))
        elif isinstance(stmt, ast.Import):
            imported.update(a.asname or a.name.split(".")[0] for a in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            imported.update(a.asname or a.name for a in stmt.names)
    return defined, imported


def _rooted_in(value: ast.AST, names: set[str]) -> bool:
    """``value`` is a bare name or attribute chain (no call) starting at one of ``names``."""
    while isinstance(value, ast.Attribute):
        value = value.value
    return isinstance(value, ast.Name) and value.id in names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


class Names:
    """Each project module's top-level names, parsed once."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules
        self.trees = {name: parse(path) for name, path in modules.items()}
        self.tables = {name: module_names(tree) for name, tree in self.trees.items()}

    def owns(self, module: str, name: str) -> bool:
        """``module`` defines ``name`` (or it is a submodule); importing it only is not owning."""
        return f"{module}.{name}" in self.modules or name in self.tables[module][0]


def definition_problems(module: str, names: Names) -> list[str]:
    """What makes one module a facade: ``noqa: F401`` shims, ``X as X`` / ``import m as m``
    re-exports, ``__all__`` listing imported names, a module ``__getattr__``, alias blocks
    (a top-level assignment that only rebinds an imported name under another name)."""
    text = names.modules[module].read_text(encoding="utf-8")
    tree = names.trees[module]
    defined, imported = names.tables[module]
    found = [f"line {n}: a re-export (noqa: F401)" for n, line in
             enumerate(text.splitlines(), start=1) if "noqa: F401" in line]
    for stmt in _top_level(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found += [f"line {stmt.lineno}: re-export {a.name} as {a.asname}" for a in stmt.names
                      if a.asname == a.name]
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "__getattr__":
            found.append(f"line {stmt.lineno}: module __getattr__ (a lazy facade)")
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            bound = [n for t in targets for n in _bound(t)]
            if bound == ["__all__"]:
                listed = {e.value for e in ast.walk(stmt.value)
                          if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                found += [f"line {stmt.lineno}: __all__ re-exports {n}"
                          for n in sorted(listed & imported - defined)]
            elif _rooted_in(stmt.value, imported):
                found.append(f"line {stmt.lineno}: alias {', '.join(bound)} = "
                             f"{ast.unparse(stmt.value)} (import it from its module)")
    return found


def import_problems(module: str, names: Names, *, strict: bool = True) -> list[str]:
    """Where one module takes names from: each ``from m import Name`` from the module that
    defines it; ``strict`` (not for tests, which test private helpers and patch where a name is
    used): no other module's ``_name``, and no ``module.Name`` reached through a module that only
    imports it."""
    tree = names.trees[module]
    found: list[str] = []
    aliases: dict[str, str] = {}        # local name -> project module it is bound to
    for node in nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in names.modules:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in names.modules:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in names.modules:
                    aliases[a.asname or a.name] = sub
                elif node.module == module:
                    continue
                elif strict and _is_private(a.name):
                    found.append(f"line {node.lineno}: private {a.name} from {node.module}")
                elif not names.owns(node.module, a.name):
                    found.append(f"line {node.lineno}: {a.name} from {node.module}, which does "
                                 "not define it")
    roots = {alias.split(".")[0] for alias in aliases}
    for node in nodes(tree) if strict else ():
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) \
                and _rooted_in(node.value, roots):
            owner = aliases.get(ast.unparse(node.value))
            if owner is None or owner == module or f"{owner}.{node.attr}" in names.modules:
                continue
            if _is_private(node.attr):
                found.append(f"line {node.lineno}: private {owner}.{node.attr}")
            elif not _is_private(node.attr) and not node.attr.startswith("__") \
                    and not names.owns(owner, node.attr):
                found.append(f"line {node.lineno}: {owner}.{node.attr}, which it does not define")
    return found


def boundary_problems(module: str, names: Names) -> list[str]:
    """bench/ imports gatebench but never tests/; gatebench and its trainer import neither."""
    banned = ("tests",) if module.startswith("bench") else ("tests", "bench")
    return [f"line {node.lineno}: imports {target}"
            for node, target in _imports(names.trees[module], names.modules)
            if target.split(".")[0] in banned]


def layering_problems(sources: dict[str, Path], tests: dict[str, Path]) -> dict[str, list[str]]:
    """Every rule above over ``sources`` (and where ``tests`` take names from), per module."""
    names = Names(find_modules(sources | tests))
    problems: dict[str, list[str]] = {}
    for module in names.modules:
        if module.split(".")[0] in tests:
            found = import_problems(module, names, strict=False)
        else:
            found = (definition_problems(module, names) + import_problems(module, names)
                     + boundary_problems(module, names))
        if found:
            problems[module] = found
    return problems



def trainer_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported name, inside a function) for each import of the trainer in one file: its package
    name, ``from gatebench import train``, or the old top-level ``train`` (never installed)."""
    tree = parse(path)
    lazy = {id(n) for f in nodes(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)}
    found = []
    for node in nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        hits = [n for n in names if n in (TRAINER, "train") or n.startswith((TRAINER + ".", "train."))]
        found += [(hit, id(node) in lazy) for hit in hits[:1]]
    return found
