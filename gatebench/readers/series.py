"""A training run's checkpoint files read as ONE ordered series: the single ordering rule that
`gatebench gates` (gates.py) and the saved-run plots and tables (rundir/saved.py) share.

Why a rule of its own: trainers name files differently (the user's ``checkpoint-2000.pt`` and
``spatial_adapter_final.pt``; gatebench's ``step_30.pt``, ``epoch_3.pt``, ``final.pt`` and
``spatial_adapter_final.pt``), and a file without a number sorted FIRST turned a healthy rising
run into a false ``collapse``. The rule (README "Gate diagnostics", "How a series is ordered"):

1. Files of different folders are different training runs, never one series.
2. A file's position is its recorded step, else its recorded epoch, else the last number in its
   file name (``epoch`` in the name: an epoch; ``step`` or ``checkpoint-N``: a step; a bare
   number in a final file's name, ``spatial_adapter_final_v2``, is a version, not a place).
3. Files at the same position with identical gate tensors are one point (names listed together).
4. A file with no position joins the last point whose gate tensors it repeats exactly; else it
   is the run's final file when its name says so (``final``, ``last``, ``latest``), when it is
   strictly the newest-modified file of the run, or when it is the run's only file: it then
   stands after every numbered point. Any other such file is left out of the series
   (``unplaced``), never guessed into it.
5. Steps: a file's step is its recorded step, else the number of a step-named file
   (``checkpoint-N``, ``step_N``: ``file name``), else, for a file joined to a point by identical
   tensors, that point's step (``identical file``); a final file that joined nothing has NO step
   (None, never guessed) and stands one save interval after the last numbered point
   (``Point.place``), so it never shares another point's position (a TensorBoard step, a plot x).

Torch-free: members are built from a CheckpointInfo or from a results.json entry.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Iterable, Literal, Sequence

_NUMBER_IN_NAME = re.compile(r"(\d+)(?!.*\d)")
_FINAL_NAME = re.compile(r"(?:^|[^a-z])(?:final|last|latest)(?:[^a-z]|$)")
_STEP_NAME = re.compile(r"step|^checkpoint[-_]\d+$")

Fingerprint = tuple[tuple[str, str], ...]
StepSource = Literal["recorded", "file name", "identical file"]


@dataclass(frozen=True)
class Member:
    """What ordering needs of one checkpoint file; ``gates`` from ``gate_fingerprint``."""

    key: str                          # the path as given (results.json's "path")
    step: int | None = None
    epoch: int | None = None
    gates: Fingerprint | None = None  # None: unknown, never identical to anything
    mtime: float | None = None        # None: unknown (a saved run), the newest-file rule is off
    tensors: str | None = None        # digest of every tensor; None: unknown (gates decide alone)

    @property
    def name(self) -> str:
        return PurePath(self.key).name

    def same(self, other: Member) -> bool:
        """The same tensors: identical gates, and identical digests where both are known (two
        files whose gates agree while their weights differ are different points)."""
        if self.gates is None or self.gates != other.gates:
            return False
        return self.tensors is None or other.tensors is None or self.tensors == other.tensors


@dataclass(frozen=True)
class Point:
    """One place in the series: the files there (identical gates), where and why."""

    members: tuple[Member, ...]
    axis: str | None                  # "step", "epoch", "checkpoint number"; None: no position
    x: int | None                     # None: a final file standing after every numbered point
    placed_by: str                    # "step", "epoch", "file name", "final name",
    #                                   "newest file" or "only file"
    place: int | None = None          # x, or a final file's own position after every numbered
    #                                   point (never another point's); None: the run has no axis

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.members]

    @property
    def step(self) -> int | None:
        """The training step of this point (None: an epoch / number axis, or a final file)."""
        return self.x if self.axis == "step" else None

    def step_of(self, member: Member) -> tuple[int | None, StepSource | None]:
        """(step, where it came from) for one file of this point (rule 5)."""
        if member.step is not None:
            return int(member.step), "recorded"
        if self.step is None:
            return None, None
        found = position(member.name, None, member.epoch)
        return self.step, "file name" if found == ("step", self.step) else "identical file"

    @property
    def final(self) -> bool:
        """True when the point has no position of its own and stands last for that reason."""
        return self.x is None and self.placed_by != "only file"


@dataclass(frozen=True)
class Series:
    """One training run (folder) in order; ``unplaced`` files are not part of the trajectory."""

    run: str
    points: tuple[Point, ...]
    unplaced: tuple[Member, ...] = ()


def training_run(path: str | PurePath) -> str:
    """The training run a checkpoint belongs to: its folder (one run writes into one folder).
    Checkpoints of different runs (the demo's good/legacy/deadlock, runA vs runB) must never be
    joined into one trajectory: that would report collapses and trends that never happened."""
    return str(PurePath(str(path)).parent)


def gate_fingerprint(gates: Iterable[tuple[str, Any]]) -> Fingerprint | None:
    """(layer, raw) pairs -> a comparable value; exact float bits decide (a copy of the same
    tensors, not a similar gate). Raw values may be JSON's "nan" strings. None when no gates."""
    pairs = sorted((str(layer), _bits(raw)) for layer, raw in gates)
    return tuple(pairs) or None


def _bits(raw: Any) -> str:
    try:
        return repr(float(raw))
    except (TypeError, ValueError):
        return repr(raw)


def position(name: str, step: int | None = None,
             epoch: int | None = None) -> tuple[str, int] | None:
    """(axis, x): the recorded step, else epoch, else the last number in the file name; None when
    the file says nothing (``spatial_adapter_final.pt``, ``final.pt`` of a bare state dict)."""
    if step is not None:
        return "step", int(step)
    if epoch is not None:
        return "epoch", int(epoch)
    stem = PurePath(name).stem.lower()
    found = _NUMBER_IN_NAME.search(stem)
    if not found:
        return None
    if "epoch" in stem:
        return "epoch", int(found.group(1))
    if _STEP_NAME.search(stem):
        return "step", int(found.group(1))
    # "spatial_adapter_final_v2": a final file's version number is no place in the series
    return None if is_final_name(stem) else ("checkpoint number", int(found.group(1)))


def is_final_name(name: str) -> bool:
    return bool(_FINAL_NAME.search(PurePath(name).stem.lower()))


def order_runs(members: Sequence[Member]) -> list[Series]:
    """Every run among ``members`` (first-appearance order), each ordered by ``order_run``."""
    runs: dict[str, list[Member]] = {}
    for m in members:
        runs.setdefault(training_run(m.key), []).append(m)
    return [order_run(group) for group in runs.values()]


def order_run(members: Sequence[Member]) -> Series:
    """One run's files as one series (the module docstring's rules 2-4)."""
    numbered: list[tuple[Member, tuple[str, int]]] = []
    loose: list[Member] = []
    for m in members:
        where = position(m.name, m.step, m.epoch)
        if where is None:
            loose.append(m)
        else:
            numbered.append((m, where))
    numbered.sort(key=lambda mw: (mw[1][1], is_final_name(mw[0].name), mw[0].name))
    points: list[_Building] = []
    for m, (axis, x) in numbered:
        twin = next((p for p in points if p.x == x and p.axis == axis and p.same(m)), None)
        if twin is not None:
            twin.members.append(m)
        else:
            how = "step" if m.step is not None else "epoch" if m.epoch is not None else \
                "file name"
            points.append(_Building([m], axis, x, how))
    newest = _strictly_newest(members)
    finals: list[tuple[Member, str]] = []
    rest: list[Member] = []
    for m in loose:
        twin = next((p for p in reversed(points) if p.same(m)), None)
        if twin is not None:
            twin.members.append(m)
        elif is_final_name(m.name):
            finals.append((m, "final name"))
        elif m is newest:
            finals.append((m, "newest file"))
        elif len(members) == 1:
            finals.append((m, "only file"))
        else:
            rest.append(m)
    finals.sort(key=lambda mh: (mh[0].mtime if mh[0].mtime is not None else -math.inf,
                                mh[0].name))
    last_points: list[_Building] = []
    for m, how in finals:
        twin = next((p for p in last_points if p.same(m)), None)
        if twin is not None:
            twin.members.append(m)
        else:
            last_points.append(_Building([m], None, None, how))
    unplaced: list[Member] = []
    for m in rest:
        twin = next((p for p in reversed(last_points) if p.same(m)), None)
        if twin is not None:
            twin.members.append(m)
        else:
            unplaced.append(m)
    run = training_run(members[0].key) if members else ""
    places = _places([p.x for p in points if p.x is not None], len(last_points))  # numbered: all
    return Series(run, tuple(p.freeze(place)
                             for p, place in zip(points + last_points, places, strict=True)),
                  tuple(unplaced))


def _places(xs: Sequence[int], finals: int) -> list[int | None]:
    """Numbered points keep their x; each final point stands one save interval (the last gap
    between numbered points, or the only point's x: the user's trainer saves first at
    ``--save-every``) after the point before it. Its step is still unknown: the interval is where
    it is drawn, never what it is reported as. No numbered point: no axis (None)."""
    if not xs:
        return [None] * finals
    gap = xs[-1] - xs[-2] if len(xs) > 1 else xs[-1]
    gap = max(1, gap)
    return [*xs, *(xs[-1] + gap * (i + 1) for i in range(finals))]


@dataclass(frozen=True)
class FileStep:
    """One file's place, flat (what `watch` logs a checkpoint at): ``place`` is its x on ``axis``
    (identical files share it; no two different points do); ``step`` None: unknown, never
    guessed (a final file that repeats no checkpoint); ``index``: its point's order in the run."""

    key: str
    run: str
    axis: str | None
    place: int | None
    step: int | None
    step_source: StepSource | None
    index: int | None                 # None: unplaced (no place in the series)
    placed_by: str                    # Point.placed_by, or "unplaced"
    final: bool


def file_steps(members: Sequence[Member]) -> list[FileStep]:
    """Every file's step and place under this module's rule, runs in first-appearance order,
    each run's files in series order, then its unplaced files (no step, no place)."""
    out: list[FileStep] = []
    for s in order_runs(members):
        for i, p in enumerate(s.points):
            for m in p.members:
                step, source = p.step_of(m)
                out.append(FileStep(m.key, s.run, p.axis, p.place, step, source, i, p.placed_by,
                                    p.final))
        # an unplaced file has no position at all, so no step either
        out += [FileStep(m.key, s.run, None, None, None, None, None, "unplaced", False)
                for m in s.unplaced]
    return out


def plot_positions(series: Sequence[Series]) -> tuple[str, dict[str, float]]:
    """(axis, {path: x}) for plots and table headings: the positions when every point has one on
    the same axis and no two points share an x (across all runs, as paths map to one x each);
    else axis "checkpoint" and x = 1, 2, ... in series order (identical files share one x,
    unplaced files come after their run's series)."""
    points = [p for s in series for p in s.points]
    axes = {p.axis for p in points}
    xs = [p.x for p in points]
    if (points and len(axes) == 1 and None not in xs and len(set(xs)) == len(xs)
            and not any(s.unplaced for s in series)):
        return str(axes.pop()), {k: float(p.x or 0) for p in points for k in p.keys}
    out: dict[str, float] = {}
    i = 0
    for s in series:
        for group in [p.keys for p in s.points] + [[m.key] for m in s.unplaced]:
            i += 1
            out.update({k: float(i) for k in group if k not in out})
    return "checkpoint", out


@dataclass
class _Building:
    """A point while ``order_run`` collects its members."""

    members: list[Member]
    axis: str | None
    x: int | None
    placed_by: str

    def same(self, m: Member) -> bool:
        return self.members[0].same(m)

    def freeze(self, place: int | None) -> Point:
        return Point(tuple(self.members), self.axis, self.x, self.placed_by, place)


def _strictly_newest(members: Sequence[Member]) -> Member | None:
    """The one file modified after every other file of the run (None if unknown or tied)."""
    if len(members) < 2 or any(m.mtime is None for m in members):
        return None
    ordered = sorted(members, key=lambda m: m.mtime or 0.0)    # none is None (checked above)
    return ordered[-1] if ordered[-1].mtime != ordered[-2].mtime else None
