"""gatebench installed as a package (issue 32): every package folder is in the wheel's list, the
protocols ship inside the package and are found from any working directory (./protocols first),
and the trainer's import name cannot be taken by a user's own train.py. CI's wheel smoke
(.ci/wheel_smoke.sh) checks the same against a built wheel installed without -e."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from gatebench.protocol import PROTOCOL_DIR, available_protocols, load_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SHIPPED = {"oracle-coco2014", "shapes"}


def _package_folders(folder: Path, name: str) -> set[str]:
    """Dotted names of ``folder`` and every folder below it that holds an __init__.py."""
    return {".".join([name, *p.parent.relative_to(folder).parts])
            for p in folder.rglob("__init__.py") if "assets" not in p.parts}


def test_every_package_folder_is_in_the_wheel() -> None:
    """packages is an explicit list (a package-dir mapped folder cannot come from packages.find):
    a new subpackage missing from it would be missing from every wheel."""
    setup = PYPROJECT["tool"]["setuptools"]
    mapped = setup["package-dir"]
    assert mapped == {"gatebench.train": "train"}
    expected = _package_folders(ROOT / "gatebench", "gatebench")
    expected |= _package_folders(ROOT / mapped["gatebench.train"], "gatebench.train")
    assert set(setup["packages"]) == expected


def test_the_protocols_are_package_data() -> None:
    """The shipped protocols sit in the package (importlib.resources finds them) and the wheel's
    package-data globs take them; the top-level protocols/ is the same folder, not a copy."""
    folder = resources.files("gatebench").joinpath("protocols")
    names = {entry.name for entry in folder.iterdir() if entry.name.endswith(".toml")}
    assert {f"{n}.toml" for n in SHIPPED} <= names
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["gatebench"]
    assert all(any(fnmatch(f"protocols/{n}", g) for g in globs) for n in names)
    assert Path(str(folder)) == PROTOCOL_DIR
    assert (ROOT / "protocols").resolve() == PROTOCOL_DIR.resolve()


def test_shipped_protocols_are_found_from_any_working_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = available_protocols()
    assert SHIPPED <= set(found)
    assert all(found[n].parent == PROTOCOL_DIR for n in SHIPPED)
    assert load_protocol("shapes").name == "shapes"


def test_working_directory_protocols_come_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "protocols"
    own.mkdir()
    text = (PROTOCOL_DIR / "shapes.toml").read_text(encoding="utf-8")
    (own / "shapes.toml").write_text(text.replace("num_samples = 48", "num_samples = 5"),
                                     encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert available_protocols()["shapes"] == Path("protocols/shapes.toml").absolute()
    assert load_protocol("shapes").num_samples == 5
    assert available_protocols()["oracle-coco2014"].parent == PROTOCOL_DIR


def test_the_trainer_runs_beside_a_users_own_train_py(tmp_path: Path) -> None:
    """`python -m gatebench train` from a folder holding train.py (and a train/ package) runs
    gatebench's trainer: its import name lives inside the gatebench namespace."""
    (tmp_path / "train.py").write_text("print('USER TRAIN.PY')\nraise SystemExit(3)\n")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "__init__.py").write_text("raise SystemExit('USER TRAIN PACKAGE')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "gatebench", "train", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "USER" not in done.stdout + done.stderr
    assert "--mixed-data" in done.stdout and "--base-model" in done.stdout


def test_nothing_imports_the_trainer_by_a_top_level_name() -> None:
    """The trainer is gatebench.train: a top-level ``train`` import works only from the checkout's
    root (where it would be a second copy of every trainer module) and never from a wheel."""
    found = []
    for folder in ("gatebench", "train", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                         else [])
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n == "train" or n.startswith("train.")]
    assert not found, found
