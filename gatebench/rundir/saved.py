"""A finished run read back from disk: results.json + the samples.jsonl beside it.

`gatebench report` and `gatebench compare` work from saved runs only, never recomputing a metric:
the numbers a reader sees are the numbers the run wrote. Image paths in samples.jsonl may be
absolute (as written by `run`) or relative to the results folder (a run folder that was moved or
committed); ``resolve_image`` finds either.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable

import pandas as pd

from gatebench.errors import GatebenchError
from gatebench.readers.series import (
    Member,
    gate_fingerprint,
    order_runs,
    plot_positions,
    position,
    training_run,
)
from gatebench.rundir.results import SUPPORTED_SCHEMA
from gatebench.rundir.samples import read_samples_jsonl
from gatebench.rundir.schema import validate_results

REQUIRED_KEYS = ("schema_version", "seed", "n_layouts", "protocol", "results", "targets",
                 "checkpoints")


@dataclass
class SavedRun:
    """One run's saved outputs; ``folder`` is where results.json lives."""

    results: dict[str, Any]
    samples: pd.DataFrame
    path: Path

    @property
    def folder(self) -> Path:
        return self.path.parent

    def checkpoint_paths(self) -> list[str]:
        """Checkpoints in series order (``checkpoint_paths``)."""
        return checkpoint_paths(self.results)


def given_order(results: dict[str, Any]) -> list[str]:
    """Checkpoints in command-line order (the order of ``results`` rows): what compare pairs by."""
    return list(dict.fromkeys(str(row["checkpoint"]) for row in results["results"]))


def checkpoint_paths(results: dict[str, Any]) -> list[str]:
    """Checkpoints in series order, the order every table, plot and grid lists them in: the one
    rule of readers/series.py (each training run where its first checkpoint was given, its files
    by step / epoch / number, a final file last, files it cannot place after their run)."""
    return [key for run in order_runs(_members(results))
            for key in [*(k for point in run.points for k in point.keys),
                        *(m.key for m in run.unplaced)]]


def checkpoint_labels(paths: Iterable[str | Path]) -> dict[str, str]:
    """{path as str: the shortest trailing part of it that no other given path ends with}.

    Every training run writes final.pt / epoch_10.pt into its own folder, so a file name alone
    mixes up ``runA/final.pt`` and ``runB/final.pt``: the label is the file name when that is
    unique, else as many parent folders as needed. Identical paths get the same label.
    """
    keys = list(dict.fromkeys(str(p) for p in paths))
    parts = {k: PurePath(k).parts for k in keys}
    labels: dict[str, str] = {}
    for key in keys:
        n = 1
        while n < len(parts[key]) and any(parts[other][-n:] == parts[key][-n:]
                                          for other in keys if other != key):
            n += 1
        labels[key] = PurePath(*parts[key][-n:]).as_posix()
    return labels


def row_label(row: dict[str, Any]) -> str:
    """A results row's checkpoint label; results.json files written before labels existed hold
    none, and their samples.jsonl named checkpoints by file name: the same fallback."""
    return str(row.get("label") or PurePath(str(row["checkpoint"])).name)


def label_map(results: dict[str, Any]) -> dict[str, str]:
    """{checkpoint path: label} of a results.json (samples.jsonl's "checkpoint" column)."""
    return {str(row["checkpoint"]): row_label(row) for row in results["results"]}


def label_of(labels: dict[str, str], checkpoint: str | PurePath) -> str:
    """The label of a checkpoint path (its file name when the run did not evaluate it)."""
    return labels.get(str(checkpoint)) or PurePath(str(checkpoint)).name


def load_results(path: str | Path) -> dict[str, Any]:
    """results.json with its schema checked (one clear error naming the file otherwise)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise GatebenchError(f"expected a results.json file, got a missing path '{path}'",
                             path=path, hint="pass the results.json a `gatebench run` wrote")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise GatebenchError(f"expected JSON, got {exc}", path=path) from None
    if not isinstance(results, dict):
        raise GatebenchError(f"expected a JSON object, got {type(results).__name__}", path=path)
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise GatebenchError(f"expected a gatebench results.json with {', '.join(missing)}, got "
                             f"a file without them", path=path,
                             hint="`gatebench score --out` writes score.json, not results.json")
    if results["schema_version"] not in SUPPORTED_SCHEMA:
        raise GatebenchError(f"expected results schema_version {SUPPORTED_SCHEMA[-1]}, got "
                             f"{results['schema_version']!r}", path=path,
                             hint="re-render with the gatebench version that wrote it")
    return validate_results(results, path)


def load_run(path: str | Path, *, need_samples: bool = True) -> SavedRun:
    """results.json and (if present, or required) samples.jsonl from the same folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    results = load_results(path)
    samples_path = path.parent / "samples.jsonl"
    if samples_path.is_file():
        samples = read_samples_jsonl(samples_path)
    elif need_samples:
        raise GatebenchError("expected samples.jsonl beside results.json, got none",
                             path=samples_path, hint="copy the run folder whole (results.json, "
                             "samples.jsonl, images/)")
    else:
        samples = pd.DataFrame()
    return SavedRun(results, samples, path)


def resolve_image(value: Any, folder: Path) -> Path | None:
    """An image of samples.jsonl: as written, else relative to the run folder, else by its
    last two components (``images/<cache>/<file>``) under ``folder/images``; None if absent."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    candidates = [path] if path.is_absolute() else [folder / path]
    if len(path.parts) >= 2:
        candidates.append(folder / "images" / path.parts[-2] / path.parts[-1])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def checkpoint_position(entry: dict[str, Any]) -> tuple[str, int | None]:
    """(axis, x) of a results.json checkpoint: recorded step, else epoch, else the number in its
    file name (readers.series.position, the rule `gatebench gates` orders by); x None: none."""
    found = position(str(entry.get("path", "")), entry.get("step"), entry.get("epoch"))
    return found if found is not None else ("checkpoint", None)


def is_one_training_run(results: dict[str, Any]) -> bool:
    """>= 2 checkpoints, all from one run: only then is a metric-vs-epoch line meaningful."""
    paths = checkpoint_paths(results)
    return len(paths) > 1 and len({training_run(p) for p in paths}) == 1


def checkpoint_axis(results: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The x axis for metric-vs-epoch plots and table headings: {checkpoint path: x}.

    The run's checkpoints ordered as `gatebench gates` orders them (readers.series): positions
    when all have one on one axis, else axis "checkpoint" with 1, 2, ... in that order (a final
    file with no number last, identical files sharing an x).
    """
    return plot_positions(order_runs(_members(results)))


def _members(results: dict[str, Any]) -> list[Member]:
    """The series members of a run's checkpoints (step, epoch and gates from results.json's
    "checkpoints"; no mtime: a saved run's files may be gone), in command-line order."""
    by_path = {str(c["path"]): c for c in results.get("checkpoints", [])}
    members = []
    for path in given_order(results):
        entry = by_path.get(path, {})
        gates = [(str(g.get("layer", g.get("key"))), g["raw"]) for g in entry.get("gates") or []
                 if isinstance(g, dict) and "raw" in g]
        members.append(Member(path, entry.get("step"), entry.get("epoch"),
                              gate_fingerprint(gates)))
    return members
