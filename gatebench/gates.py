"""Gate health: statistics per checkpoint, trajectories over checkpoints or logs, findings.

The user's worst failures were visible here before any image was generated: a gate that fell from
3.0 to 0.29 (``collapse``) and a gate and ``to_out`` both at zero that never moved (``deadlock``).
Thresholds come from the protocol's ``[gates]`` table (defaults: the user's validation guide).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np

from gatebench.adapters.types import CheckpointInfo
from gatebench.errors import CheckpointError
from gatebench.protocol import GateThresholds
from gatebench.readers.logs import LogSeries
from gatebench.readers.series import (
    FileStep,
    Member,
    Series,
    file_steps,
    gate_fingerprint,
    order_runs,
    training_run,
)
from gatebench.rundir.results import findings_verdict
from gatebench.rundir.saved import checkpoint_labels

if TYPE_CHECKING:
    from gatebench.checkpoint import UnreadableCheckpoint

SCHEMA_VERSION = 1
Severity = Literal["fail", "warn"]

HINTS = {
    "deadlock": "gate and to_out are both exactly 0, so each one's gradient (the other) is 0 "
                "and neither can ever move; initialise the gate at 0 with a normally initialised "
                "to_out (GLIGEN) or to_out 0 with gate 0.1, and verify with `gatebench check-init`",
    "collapse": "the adapter is being shut out (typical of a random to_out with a large initial "
                "gate such as 3.0); retrain with zero-init (`--init gligen`), and check phrase "
                "embeddings, --phrase-dropout 0.05 and looser cleaning --min-area 5e-5 "
                "--min-side 0.005",
    "falling": "poor phrase embeddings or over-aggressive data cleaning; try --phrase-dropout "
               "0.05 and looser cleaning --min-area 5e-5 --min-side 0.005",
    # a gate falling from a large start is the early part of the user's 3.0 -> 0.29 collapse
    "falling_from_large": "the gate started large (>= 1, e.g. 3.0 with a random to_out) and is "
                          "being pulled down: the start of a collapse; retrain with `--init "
                          "gligen` or `zero-out` (then check phrase embeddings and cleaning)",
    "not_learning": "the learning rate may be too small (try --lr 5e-4) or the gate frozen "
                    "(drop --freeze-gate)",
    "near_zero": "the adapter barely acts; expected early in training, a problem late "
                 "(try --lr 5e-4 and check phrase embeddings)",
    "saturated": "tanh(gate) is saturated: gradients through it vanish and gate scales > 1 "
                 "over-drive the UNet (garbled images); typical of a large initial gate",
    "nan": "training diverged; lower --lr, keep gradient clipping on, check fp16 overflow",
    "extrapolated_scale": "training sampled gate scales only in the recorded range; results "
                          "outside it are extrapolation",
    "single_box_unlocalisable": "an architecture limit, not a training failure: retrain with "
                                "`--null-slot` (a zero key any token may pick instead of the "
                                "box) or `--box-mask` (region attention) to place single objects",
}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    subject: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateStats:
    n: int
    mean: float          # of effective gates tanh(raw)
    std: float
    min: float
    max: float
    raw_mean: float
    near_zero_share: float
    saturated_share: float
    nonfinite: int


@dataclass(frozen=True)
class TrajectoryPoint:
    x: int               # step (or epoch / number parsed from the file name, see ``axis``)
    gate_mean: float     # mean raw gate, like the user's train.log
    effective_mean: float | None = None
    label: str = ""      # the file name; identical files joined: "step_30.pt = final.pt = ..."
    series: str = ""     # the training run (checkpoint folder) when several are analysed together
    labels: tuple[str, ...] = ()   # each file at this point (readers.series: identical gates)
    placed_by: str = ""  # why it stands here: step / epoch / file name / final name / newest file
    final: bool = False  # no step of its own: x is one save interval after the run's last point
    step: int | None = None   # the training step (None: unknown, or an epoch / number axis)


@dataclass(frozen=True)
class CheckpointReport:
    info: CheckpointInfo
    stats: GateStats
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class GateReport:
    checkpoints: tuple[CheckpointReport, ...] = ()
    logs: tuple[tuple[LogSeries, tuple[Finding, ...]], ...] = ()
    trajectory: tuple[TrajectoryPoint, ...] = ()
    trajectory_axis: str = "step"
    trajectory_findings: tuple[Finding, ...] = ()
    unplaced: tuple[str, ...] = ()   # checkpoints with no place in their run's series (paths)
    extra_findings: tuple[Finding, ...] = field(default_factory=tuple)
    steps: tuple[FileStep, ...] = ()  # each checkpoint's step and where it came from
    # files that could not be read (a partial save): listed, never judged, never sinking the rest
    unreadable: tuple[UnreadableCheckpoint, ...] = ()

    @property
    def findings(self) -> list[Finding]:
        out = [f for c in self.checkpoints for f in c.findings]
        out += [f for _, fs in self.logs for f in fs]
        return out + list(self.trajectory_findings) + list(self.extra_findings)

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @property
    def verdict(self) -> str:
        return findings_verdict(f.severity for f in self.findings)


def gate_stats(info: CheckpointInfo, thresholds: GateThresholds) -> GateStats:
    raw = np.array([g.raw for g in info.gates], dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    eff = np.tanh(finite)
    if finite.size == 0:
        nan = float("nan")
        return GateStats(len(raw), nan, nan, nan, nan, nan, nan, nan, int(raw.size))
    return GateStats(
        n=int(raw.size), mean=float(eff.mean()), std=float(eff.std()), min=float(eff.min()),
        max=float(eff.max()), raw_mean=float(finite.mean()),
        near_zero_share=float((np.abs(finite) < thresholds.near_zero).mean()),
        saturated_share=float((np.abs(eff) > thresholds.saturated).mean()),
        nonfinite=int(raw.size - finite.size))


def checkpoint_findings(info: CheckpointInfo, stats: GateStats, t: GateThresholds,
                        judge_level: bool = True) -> list[Finding]:
    """Findings visible in a single checkpoint; ``judge_level`` False (a young, rising run:
    ``level_judged``) keeps a below-range level from warning where the user's table expects it."""
    subject = str(info.path)
    out: list[Finding] = []
    if stats.nonfinite:
        out.append(Finding("nan", "fail", f"{stats.nonfinite} of {stats.n} gates are NaN/Inf; "
                           f"{HINTS['nan']}", subject))
    dead = [g for g in info.gates if g.raw == 0.0 and g.out_proj_zero]
    if dead:
        layers = ", ".join(g.layer for g in dead[:4]) + (" ..." if len(dead) > 4 else "")
        step = f" at step {info.training.step}" if info.training.step is not None else ""
        out.append(Finding("deadlock", "fail", f"{len(dead)} of {stats.n} gates and their output "
                           f"projections are exactly 0{step} ({layers}); {HINTS['deadlock']}",
                           subject))
    at_init = info.training.step == 0
    steps = info.training.step
    if (not dead and not at_init and info.training.gate_init is not None and steps is not None
            and steps >= t.not_learning_steps
            and all(abs(g.raw - info.training.gate_init) < t.not_learning_tol for g in info.gates)):
        out.append(Finding("not_learning", "fail", f"all gates still at their init value "
                           f"{info.training.gate_init:g} after {steps} steps; "
                           f"{HINTS['not_learning']}", subject))
    if stats.nonfinite == stats.n:
        return out
    if not at_init and not dead and judge_level:
        if stats.near_zero_share >= t.near_zero_share_max:
            share = beside(stats.near_zero_share, t.near_zero_share_max, True)
            out.append(Finding("near_zero", "warn", f"{share} of gates have |gate| < "
                               f"{t.near_zero:g} (healthy: < {t.near_zero_share_max:.0%}); "
                               f"{HINTS['near_zero']}", subject))
        elif abs(stats.mean) < t.healthy_mean_low:
            out.append(Finding("near_zero", "warn", f"mean tanh(gate) "
                               f"{beside(stats.mean, t.healthy_mean_low)} is below the healthy "
                               f"range {t.healthy_mean_low:g}-{t.healthy_mean_high:g}; "
                               f"{HINTS['near_zero']}", subject))
    if stats.saturated_share >= t.saturated_share_max:
        share = beside(stats.saturated_share, t.saturated_share_max, True)
        out.append(Finding("saturated", "warn", f"{share} of gates have |tanh(gate)| > "
                           f"{t.saturated:g} (healthy: < {t.saturated_share_max:.0%}); "
                           f"{HINTS['saturated']}", subject))
    elif abs(stats.mean) > t.healthy_mean_high:
        out.append(Finding("saturated", "warn", f"mean tanh(gate) "
                           f"{beside(stats.mean, t.healthy_mean_high)} is above the healthy "
                           f"range {t.healthy_mean_low:g}-{t.healthy_mean_high:g}; "
                           f"{HINTS['saturated']}", subject))
    return out


def beside(value: float, limit: float, percent: bool = False) -> str:
    """``value`` with the digits it needs to read on its own side of ``limit`` (by magnitude):
    0.0996 < 0.1, never "0.100 is below 0.1"; 3 significant digits where that is enough."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{value * scale:.3g}"
    for digits in range(3, 17):
        text = f"{value * scale:.{digits}g}"
        shown = abs(float(text)) / scale
        if (shown < limit) == (abs(value) < limit) and (shown > limit) == (abs(value) > limit):
            break
    return text + unit


def level_judged(run: Series, means: Sequence[float], t: GateThresholds) -> list[bool]:
    """Per point of one run: whether a below-range level (``near_zero``) means something there.

    The user's table is the spec: gate mean 0.00 at the start, 0.05-0.1 in the middle, 0.3-0.8
    late, rising. So a level below the healthy range is judged only where the run has had time
    to rise (its step >= ``rise_steps``; a step that is not known, an epoch axis or a lone
    final file, counts as late) or where it is not rising: it fell by more than
    ``falling_fraction`` from its earlier peak, or it gained less than ``not_learning_tol`` over
    at least ``not_learning_steps``. A final file without a step is judged at its place (at most
    one save interval after the last checkpoint). ``means``: each point's mean tanh(gate)."""
    out: list[bool] = []
    first = run.points[0].place if run.points else None
    for i, p in enumerate(run.points):
        step = p.place if p.axis == "step" else None
        if step is None:
            out.append(True)
            continue
        mags = [abs(m) for m in means[:i + 1]]
        fell = i > 0 and mags[-1] < (1.0 - t.falling_fraction) * max(mags[:-1])
        flat = (first is not None and step - first >= t.not_learning_steps
                and mags[-1] - mags[0] < t.not_learning_tol)
        out.append(step >= t.rise_steps or fell or flat)
    return out


def trajectory_findings(points: Sequence[TrajectoryPoint], t: GateThresholds, subject: str,
                        axis: str = "step") -> list[Finding]:
    """collapse / falling / not_learning / nan over an ordered gate-mean series."""
    if not points:
        return []
    values = [p.gate_mean for p in points]
    if any(not math.isfinite(v) for v in values):
        first = next(p for p in points if not math.isfinite(p.gate_mean))
        return [Finding("nan", "fail", f"gate mean is NaN/Inf at {_at(first, axis)}; "
                        f"{HINTS['nan']}", subject)]
    if len(points) < 2:
        return []
    mags = [abs(v) for v in values]
    peak_i = int(np.argmax(mags))
    peak, last = mags[peak_i], mags[-1]
    out: list[Finding] = []
    path = " -> ".join(f"{v:.3g}" for v in _thin(values))
    if (peak_i < len(points) - 1 and peak >= t.collapse_min_peak
            and last < (1.0 - t.collapse_fraction) * peak):
        out.append(Finding("collapse", "fail", f"gate mean fell from its peak {values[peak_i]:.3g} "
                           f"({_at(points[peak_i], axis)}) to {values[-1]:.3g} "
                           f"({_at(points[-1], axis)}), a {1 - last / peak:.0%} drop (limit "
                           f"{t.collapse_fraction:.0%}); trajectory {path}; {HINTS['collapse']}",
                           subject))
    else:
        run = 1
        while run < len(mags) and mags[-run - 1] > mags[-run]:
            run += 1
        start = mags[-run]
        if (run >= 3 and start >= t.near_zero
                and (start - last) > t.falling_fraction * start):
            out.append(Finding("falling", "warn", f"gate mean has fallen for the last {run} points "
                               f"({start:.3g} -> {last:.3g}, -{(start - last) / start:.0%}); "
                               f"trajectory {path}; "
                               f"{HINTS['falling_from_large' if mags[0] >= 1.0 else 'falling']}",
                               subject))
    known = [p for p in points if not p.final]     # a final file's step is not known
    span = known[-1].x - known[0].x if known else 0
    if axis == "step" and span >= t.not_learning_steps and max(
            abs(v - values[0]) for v in values) < t.not_learning_tol:
        exact = " (exactly 0 throughout: consistent with a deadlock)" if all(
            v == 0 for v in values) else ""
        out.append(Finding("not_learning", "fail", f"gate mean stayed at {values[0]:.3g} over "
                           f"{span} steps{exact}; {HINTS['not_learning']}", subject))
    return out


def _at(point: TrajectoryPoint, axis: str) -> str:
    """Where a point stands, for messages: "step 2000", or the final file that has no step."""
    if point.final:
        return f"{point.labels[0] if point.labels else point.label}, the run's final file"
    return f"{axis} {point.x}"


def _thin(values: Sequence[float], keep: int = 8) -> list[float]:
    if len(values) <= keep:
        return list(values)
    idx = np.linspace(0, len(values) - 1, keep).round().astype(int)
    return [values[i] for i in idx]


def scale_findings(info: CheckpointInfo, gate_scales: Iterable[float]) -> list[Finding]:
    low, high = info.training.scale_min, info.training.scale_max
    if low is None or high is None:
        return []
    outside = [s for s in gate_scales if s != 0.0 and not (low - 1e-9 <= s <= high + 1e-9)]
    if not outside:
        return []
    return [Finding("extrapolated_scale", "warn", f"gate scales {', '.join(f'{s:g}' for s in outside)} "
                    f"lie outside the training range [{low:g}, {high:g}]; "
                    f"{HINTS['extrapolated_scale']}", str(info.path))]


def architecture_findings(infos: Sequence[CheckpointInfo],
                          box_counts: Sequence[int] | None = None) -> list[Finding]:
    """What the user's forward cannot do whatever its training: with no null slot and no region
    mask, ONE box is a softmax over one key (weight 1 at every image token, so every token gets
    the same vector wherever the box is) and NO box attends uniformly to zeros (only the bias).
    One finding for all the checkpoints it applies to: it is the architecture, not a checkpoint."""
    affected = [info for info in infos if info.family == "user"
                and "widths" in info.adapter_config and not info.adapter_config.get("null_slot")
                and not info.adapter_config.get("box_mask")]
    if not affected:
        return []
    labels = checkpoint_labels(info.path for info in affected)
    names = [labels[str(info.path)] for info in affected]
    subject = ", ".join(names) if len(names) <= 3 else f"{len(names)} checkpoints"
    message = ("with this adapter's forward (no null slot, no box mask) a layout with one box "
               "gives every image token the same vector (softmax over a single key) and a layout "
               "with no box adds only tanh(gate) * to_out.bias: neither can be localised")
    if box_counts is not None:
        one, none = sum(c == 1 for c in box_counts), sum(c == 0 for c in box_counts)
        message += (f"; {(one + none) / max(1, len(box_counts)):.0%} of the {len(box_counts)} "
                    f"evaluated layouts are affected ({one} with one box, {none} with none)")
    return [Finding("single_box_unlocalisable", "warn",
                    f"{message}; {HINTS['single_box_unlocalisable']}", subject)]


def analyse(infos: Sequence[CheckpointInfo], logs: Sequence[LogSeries],
            thresholds: GateThresholds, gate_scales: Iterable[float] = (),
            box_counts: Sequence[int] | None = None) -> GateReport:
    """The whole `gatebench gates` analysis over checkpoints and logs; ``box_counts`` (boxes per
    evaluated layout, from `run`) sizes the architecture findings."""
    scales, members = tuple(gate_scales), checkpoint_members(infos)
    stats = {id(m): gate_stats(info, thresholds) for info, m in zip(infos, members, strict=True)}
    # One series per training run (folder), ordered by the rule readers.series documents.
    runs = order_runs(members)
    judged: dict[int, bool] = {}
    for run in runs:
        means = [stats[id(p.members[0])].mean for p in run.points]
        for p, judge in zip(run.points, level_judged(run, means, thresholds), strict=True):
            judged.update({id(m): judge for m in p.members})
        # no place in the series: only a recorded step says the file is young
        judged.update({id(m): m.step is None or m.step >= thresholds.rise_steps
                       for m in run.unplaced})
    reports: dict[int, CheckpointReport] = {}
    for info, member in zip(infos, members, strict=True):
        findings = checkpoint_findings(info, stats[id(member)], thresholds, judged[id(member)])
        findings += scale_findings(info, scales)
        reports[id(member)] = CheckpointReport(info, stats[id(member)], tuple(findings))
    names = {f: label + "/" for f, label in checkpoint_labels([r.run for r in runs]).items()}
    axes = {p.axis for run in runs for p in run.points if p.axis is not None}
    axis = axes.pop() if len(axes) == 1 else "checkpoint"
    ordered: list[CheckpointReport] = []
    points: list[TrajectoryPoint] = []
    traj: list[Finding] = []
    for run in runs:
        ordered += [reports[id(m)] for p in run.points for m in p.members]
        ordered += [reports[id(m)] for m in run.unplaced]
        name = names[run.run] if len(runs) > 1 else ""
        subject = f"checkpoint series {name}".strip()
        run_points = _run_points(run, reports, axis, name)
        # A single checkpoint of ours carries its own history: analyse it as a trajectory too.
        own = [reports[id(m)].info for m in run.points[0].members] if len(run.points) == 1 else []
        if axis == "step" and (history := [i for i in own if i.training.gate_history]):
            run_points = [TrajectoryPoint(int(row[0]), row[1], series=name)
                          for row in history[0].training.gate_history]
            subject = f"{history[0].path.name} history"
        if len(run_points) > 1:
            traj += trajectory_findings(run_points, thresholds, subject, axis)
        points += run_points
    log_reports = []
    for log in logs:
        frame = log.gate_points
        pts = [TrajectoryPoint(int(s), float(m))
               for s, m in zip(frame["step"], frame["gate_mean"], strict=True)]
        log_reports.append((log, tuple(trajectory_findings(pts, thresholds, str(log.source)))))
    return GateReport(checkpoints=tuple(ordered), logs=tuple(log_reports),
                      trajectory=tuple(points), trajectory_axis=axis,
                      trajectory_findings=tuple(traj),
                      unplaced=tuple(m.key for run in runs for m in run.unplaced),
                      extra_findings=tuple(architecture_findings(infos, box_counts)),
                      steps=tuple(file_steps(members)))


def checkpoint_member(info: CheckpointInfo) -> Member:
    """One checkpoint as the series rule reads it, without a tensor digest (identity by gates;
    ``checkpoint_members`` adds digests where gates are equal)."""
    try:
        mtime: float | None = info.path.stat().st_mtime_ns
    except OSError:
        mtime = None
    return Member(str(info.path), info.training.step, info.training.epoch,
                  gate_fingerprint((g.layer, g.raw) for g in info.gates), mtime)


def checkpoint_members(infos: Sequence[CheckpointInfo]) -> list[Member]:
    """What the series rule (readers.series) reads of each checkpoint: recorded step and epoch,
    gates, mtime (a file written last is the final one) and, only where gates alone cannot tell
    two files of one folder apart (equal gates), a digest of every tensor: reading them all costs
    about 55 ms per 35 MB file, so a folder of distinct gates is never read twice."""
    members = [checkpoint_member(info) for info in infos]
    shared = Counter((training_run(m.key), m.gates) for m in members if m.gates is not None)
    if all(n < 2 for n in shared.values()):
        return members
    from gatebench.checkpoint import tensors_digest_of  # noqa: PLC0415 - torch, only when needed
    return [dataclasses.replace(m, tensors=tensors_digest_of(Path(m.key)))
            if m.gates is not None and shared[(training_run(m.key), m.gates)] > 1 else m
            for m in members]


def checkpoint_steps(infos: Sequence[CheckpointInfo]) -> list[FileStep]:
    """Each checkpoint's step, where it came from and its place in its run (readers.series
    rule 5): ``checkpoint-N.pt`` is step N; a final file repeating the last checkpoint's tensors
    is that step; any other final file has step None and a place after the last point."""
    return file_steps(checkpoint_members(infos))


def _run_points(run: Series, reports: dict[int, CheckpointReport], axis: str,
                name: str) -> list[TrajectoryPoint]:
    """One point per place in the run's series; a final file without a step stands at its own
    place after the last point (readers.series: never another point's x)."""
    out: list[TrajectoryPoint] = []
    for i, p in enumerate(run.points):
        stats = reports[id(p.members[0])].stats
        x = i if axis == "checkpoint" else p.place if p.place is not None else (
            out[-1].x + 1 if out else 0)
        labels = tuple(dict.fromkeys(m.name for m in p.members))
        out.append(TrajectoryPoint(x, stats.raw_mean, stats.mean, " = ".join(labels), name,
                                   labels, p.placed_by, p.final, p.step))
    return out


def analyse_paths(paths: Sequence[Path], logs: Sequence[Path], thresholds: GateThresholds,
                  gate_scales: Iterable[float] = ()) -> tuple[GateReport, list[Path]]:
    """`gatebench gates PATHS --log LOG`: (the report, every input file it read). A checkpoint
    that cannot be read is listed in ``report.unreadable`` and the rest is judged; only when no
    checkpoint and no log could be read is its error raised (bad input, exit 2)."""
    from gatebench.checkpoint import UnreadableCheckpoint, try_inspect_checkpoint  # noqa: PLC0415
    from gatebench.readers.logs import read_logs  # noqa: PLC0415
    from gatebench.readers.paths import expand_paths  # noqa: PLC0415

    checkpoint_paths, log_dirs = expand_paths(tuple(paths))
    read = [try_inspect_checkpoint(p) for p in checkpoint_paths]
    infos = [r for r in read if not isinstance(r, UnreadableCheckpoint)]
    unreadable = tuple(r for r in read if isinstance(r, UnreadableCheckpoint))
    series = [s for source in (*log_dirs, *logs) for s in read_logs(source)]
    if unreadable and not infos and not series:     # nothing to judge: bad input, one line
        raise CheckpointError(unreadable[0].message)
    report = dataclasses.replace(analyse(infos, series, thresholds, gate_scales),
                                 unreadable=unreadable)
    return report, [*checkpoint_paths, *logs]


def to_json(report: GateReport) -> dict[str, Any]:
    """The ``gates --json`` document (README "Gate diagnostics" lists the trajectory's keys)."""
    checkpoints = []
    steps = {s.key: s for s in report.steps}
    for c in report.checkpoints:
        info = c.info
        placed = steps.get(str(info.path))
        step = placed.step if placed is not None else info.training.step
        checkpoints.append({
            "path": str(info.path), "sha256": info.sha256, "format": info.format,
            "family": info.family, "size_bytes": info.size_bytes,
            # the step wherever it is known: recorded, the file name's, or the identical file's
            "step": step, "step_source": (placed.step_source if placed is not None else
                                          "recorded" if step is not None else None),
            "epoch": info.training.epoch,
            "init_scheme": info.training.init_scheme,
            # what the adapter computes (query source, null slot, region attention): results
            # from differently built adapters are different claims
            "adapter_config": dict(info.adapter_config),
            "scale_range": [info.training.scale_min, info.training.scale_max],
            "gates": [{"key": g.key, "layer": g.layer, "kind": g.kind, "width": g.width,
                       "raw": _num(g.raw), "effective": _num(g.effective),
                       "out_proj_zero": g.out_proj_zero} for g in info.gates],
            "stats": {k: _num(v) for k, v in asdict(c.stats).items()},
            "findings": [f.to_dict() for f in c.findings]})
    logs = [{"path": str(s.source), "kind": s.kind, "points": int(len(s.gate_points)),
             "last": {k: _num(v) for k, v in s.frame.iloc[-1].to_dict().items()},
             "writes": [{k: _num(v) for k, v in row.items()}
                        for row in s.write_points.to_dict("records")],
             "findings": [f.to_dict() for f in fs]} for s, fs in report.logs]
    return {"schema_version": SCHEMA_VERSION, "checkpoints": checkpoints, "logs": logs,
            "trajectory": {"axis": report.trajectory_axis,
                           "points": [{"x": p.x, "gate_mean": _num(p.gate_mean),
                                       "effective_mean": _num(p.effective_mean), "label": p.label,
                                       "labels": list(p.labels), "series": p.series,
                                       "placed_by": p.placed_by, "final": p.final,
                                       "step": p.step}
                                      for p in report.trajectory],
                           "unplaced": list(report.unplaced)},
            "unreadable": [{"path": str(u.path), "message": u.message, "truncated": u.truncated}
                           for u in report.unreadable],
            "findings": [f.to_dict() for f in report.findings], "verdict": report.verdict}


def _num(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become strings so parsers never choke."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
