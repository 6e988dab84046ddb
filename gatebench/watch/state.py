"""OUT/watch.json: the trajectory of a watched training run, and the watch's memory.

Why on disk and rewritten atomically after every change: a watch is stopped (Ctrl-C, SIGTERM,
a crash, a CI job ending) and started again; what it evaluated must not be evaluated again,
what it reported (an unreadable file, a deletion, a finding) must not be reported again, and an
interrupted write must leave the previous file whole (files.atomic_output).

``checkpoints`` lists the run's files in series order (readers/series.py); a file whose content
changed (a restarted run writing the same name) gets a new entry, and the old one moves to
``replaced`` with its run folder: an earlier result is kept apart, never silently replaced.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from gatebench.errors import GatebenchError
from gatebench.files import atomic_write_text
from gatebench.readers.series import Member, order_run

SCHEMA_VERSION = 1
WATCH_FILE = "watch.json"
STATUSES = ("waiting", "evaluated", "same_point", "unreadable", "error", "deleted", "unplaced")
# field -> JSON kinds accepted (None: null allowed)
_ENTRY_KINDS: dict[str, tuple[type | None, ...]] = {
    "path": (str,), "status": (str,), "step": (int, None), "step_source": (str, None),
    "recorded_step": (int, None), "sha256": (str, None),
    "results": (str, None), "run": (str, None), "reason": (str, None), "reported": (list,),
    "headline": (dict, None), "x": (int, None), "axis": (str, None), "tb_step": (int, None)}
_TOP_KINDS: dict[str, tuple[type | None, ...]] = {
    "schema_version": (int,), "run_dir": (str,), "checkpoints": (list,), "replaced": (list,),
    "findings": (list,), "verdict": (str,), "settings": (dict,), "best": (dict, None)}


@dataclass
class Entry:
    """One checkpoint file (one content of it) and what the watch knows of it."""

    path: str
    status: str = "waiting"
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    step: int | None = None            # recorded inside the file (watch.json: recorded_step)
    epoch: int | None = None
    gates: list[list[str]] | None = None
    tensors: str | None = None         # digest of every tensor: equal gates, other weights
    reason: str | None = None
    run: str | None = None             # the run folder, relative to OUT
    results: str | None = None         # its results.json, relative to OUT
    verdict: str | None = None
    headline: dict[str, Any] | None = None   # {scale: {metric: {value, ci_low, ci_high}}}
    x: int | None = None               # series position on ``axis`` (None: a final file)
    train_step: int | None = None      # its training step by series rule 5 (None: unknown)
    step_source: str | None = None     # where train_step came from: recorded, file name, ...
    axis: str | None = None
    placed_by: str | None = None
    final: bool = False
    tb_step: int | None = None         # where its eval/ points stand in TensorBoard: its
    #                                    training step, else its place in the series
    gate_mean: float | None = None     # its mean effective gate (results.json's gate stats)
    same_as: str | None = None         # another file at the same point (identical gates)
    reported: list[str] = field(default_factory=list)   # statuses already told the user
    evaluated_at: str | None = None
    seconds: float | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name

    def member(self) -> Member:
        gates = tuple((str(a), str(b)) for a, b in self.gates) if self.gates else None
        return Member(self.path, self.step, self.epoch, gates,
                      float(self.mtime_ns) if self.mtime_ns is not None else None, self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """``step`` is the training step wherever it came from (``step_source``: recorded in
        the file, its file name, an identical file), as gates and results.json report it."""
        doc = asdict(self) | {"name": self.name}
        doc["recorded_step"] = doc.pop("step")
        doc["step"] = doc.pop("train_step")
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Entry:
        known = {f.name for f in fields(cls)}
        doc = dict(doc)
        if "recorded_step" in doc:             # the training step is re-derived by ``order``
            doc["train_step"], doc["step"] = doc.get("step"), doc.pop("recorded_step")
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class WatchState:
    """watch.json in memory; ``save`` writes it whole."""

    run_dir: str
    settings: dict[str, Any]
    checkpoints: list[Entry] = field(default_factory=list)
    replaced: list[Entry] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    verdict: str = "pending"
    complete: bool = False
    _saved: str | None = field(default=None, repr=False, compare=False)

    def entry(self, path: str) -> Entry | None:
        return next((e for e in self.checkpoints if e.path == path), None)

    def order(self) -> None:
        """Series order by the ONE rule (readers/series.py); files it leaves out go last. Each
        entry's TensorBoard step: its training step (rule 5: recorded, else a step-named file's
        number, else an identical file's), else its point's place (a final file: one save
        interval after the last point), else the point's number; fixed once its points are
        written, so a later file never moves them."""
        series = order_run([e.member() for e in self.checkpoints])
        by_path = {e.path: e for e in self.checkpoints}
        ordered: list[Entry] = []
        for number, point in enumerate(series.points, start=1):
            for i, m in enumerate(point.members):
                e = by_path[m.key]
                e.x, e.axis, e.placed_by, e.final = point.x, point.axis, point.placed_by, \
                    point.final
                e.train_step, e.step_source = point.step_of(m)
                e.same_as = point.members[0].key if i else None
                if e.tb_step is None or e.results is None:
                    e.tb_step = next(v for v in (e.train_step, point.place, number)
                                     if v is not None)
                ordered.append(e)
        for m in series.unplaced:
            e = by_path[m.key]
            e.x = e.axis = e.placed_by = e.same_as = e.train_step = e.step_source = None
            ordered.append(e)
        self.checkpoints = ordered

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "run_dir": self.run_dir,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "settings": self.settings, "verdict": self.verdict, "complete": self.complete,
                "best": self.best, "checkpoints": [e.to_dict() for e in self.checkpoints],
                "replaced": [e.to_dict() for e in self.replaced], "findings": self.findings}

    def save(self, out: Path) -> Path:
        """Write watch.json when its content changed since the last save (an idle poll writes
        nothing: follow mode stays well under 1 % of a core)."""
        doc = self.to_dict()
        content = json.dumps({k: v for k, v in doc.items() if k != "updated"}, sort_keys=True)
        path = out / WATCH_FILE
        if content != self._saved or not path.is_file():
            atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False))
            self._saved = content
        return path


def load_state(out: Path, run_dir: Path, settings: dict[str, Any]) -> WatchState:
    """The watch's memory of an earlier session in ``out``, or a fresh one. A watch.json of
    another run folder or of other settings (protocol, scales, N) is refused: its results would
    not pair with the new ones."""
    path = out / WATCH_FILE
    if not path.is_file():
        return WatchState(str(run_dir), settings)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GatebenchError(f"expected a readable watch.json, got {type(exc).__name__}: {exc}",
                             path=path, hint="delete it to start the watch afresh") from None
    validate_watch(doc, path)
    if doc["run_dir"] != str(run_dir):
        raise GatebenchError(f"expected a watch of {run_dir}, got one of {doc['run_dir']}",
                             path=path, hint="give another --out for this run")
    if doc["settings"] != settings:
        changed = sorted(k for k in set(settings) | set(doc["settings"])
                         if settings.get(k) != doc["settings"].get(k))
        raise GatebenchError(f"expected the settings of the earlier watch, got other "
                             f"{', '.join(changed)}", path=path,
                             hint="give another --out (results of other settings do not pair)")
    return WatchState(doc["run_dir"], doc["settings"],
                      [Entry.from_dict(e) for e in doc["checkpoints"]],
                      [Entry.from_dict(e) for e in doc["replaced"]], list(doc["findings"]),
                      doc.get("best"), doc["verdict"], bool(doc.get("complete")))


def validate_watch(doc: Any, path: Path) -> dict[str, Any]:
    """One error naming the first field of watch.json that the watch cannot use."""
    if not isinstance(doc, dict):
        _refuse("the document", "an object", doc, path)
    if doc.get("schema_version") != SCHEMA_VERSION:
        _refuse("schema_version", str(SCHEMA_VERSION), doc.get("schema_version"), path)
    _check(doc, _TOP_KINDS, "", path)
    for key in ("checkpoints", "replaced"):
        for i, entry in enumerate(doc[key]):
            if not isinstance(entry, dict):
                _refuse(f"{key}[{i}]", "an object", entry, path)
            _check(entry, _ENTRY_KINDS, f"{key}[{i}].", path)
            if entry["status"] not in STATUSES:
                _refuse(f"{key}[{i}].status", " / ".join(STATUSES), entry["status"], path)
    return doc


def _check(obj: dict[str, Any], kinds: dict[str, tuple[type | None, ...]], where: str,
           path: Path) -> None:
    for key, allowed in kinds.items():
        value = obj.get(key)
        ok = (value is None and None in allowed) or any(
            t is not None and isinstance(value, t) and not (t is int and isinstance(value, bool))
            for t in allowed)
        if not ok:
            names = " or ".join("null" if t is None else t.__name__ for t in allowed)
            _refuse(where + key, names, value, path)


def _refuse(name: str, expected: str, got: Any, path: Path) -> None:
    shown = repr(got) if len(repr(got)) <= 40 else repr(got)[:37] + "..."
    raise GatebenchError(f"expected watch.json field '{name}' to be {expected}, got {shown}",
                         path=path, hint="delete watch.json to start the watch afresh")


def evaluated(entries: Sequence[Entry]) -> list[Entry]:
    """The evaluated entries in series order."""
    return [e for e in entries if e.status == "evaluated"]
