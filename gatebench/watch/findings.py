"""What a training run's trajectory says while it trains: the user's four questions (the gate
rises from 0, the loss keeps falling, images stay clean, control grows) as findings, each raised
once, with the user's own advice where their note gives it; and the best checkpoint so far.

The gate findings are `gatebench gates`' own (gates.analyse over the live logs); the
regression rule is compare's (compare.compare_runs over two run folders of the same layouts).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gatebench.errors import GatebenchError
from gatebench.gates import analyse
from gatebench.metrics.spec import higher_is_better
from gatebench.protocol import GateThresholds, Protocol
from gatebench.readers.logs import LogSeries
from gatebench.watch.state import Entry
from gatebench.watch.trend import ALPHA, MIN_POINTS, mann_kendall

CONTROL_METRICS = ("iou50_rate", "effect_lift")    # the first one measured at every point
ADVICE = {
    "loss_not_falling": "raise the learning rate (e.g. 5e-4), the note's item 2",
    "garbled_images": "check the zero init with `gatebench check-init --ckpt CHECKPOINT` "
                      "(the note's item 3)",
    "control_not_growing": "the gate opens but placement does not follow: look at where it "
                           "writes (effect_lift, the grids) and at the layouts' box sizes",
    "regression_vs_best": "compare the two run folders with `gatebench compare BEST NEWEST`",
}


@dataclass(frozen=True)
class WatchFinding:
    code: str
    severity: str          # "warn" or "fail", as gates' findings
    message: str
    subject: str           # a log file, a checkpoint, the trajectory

    @property
    def key(self) -> tuple[str, str]:
        return self.code, self.subject

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def loss_finding(logs: Sequence[LogSeries]) -> list[WatchFinding]:
    """``loss_not_falling`` from the log with the most loss points (trend.py says which test
    and why); nothing before trend.MIN_POINTS logged losses."""
    best = max(logs, key=lambda log: int(log.frame["loss"].notna().sum()), default=None)
    if best is None:
        return []
    frame = best.frame.dropna(subset=["loss"])
    if len(frame) < MIN_POINTS:
        return []
    trend = mann_kendall(frame["step"].to_numpy(float), frame["loss"].to_numpy(float))
    if trend is None or trend.falling(ALPHA):
        return []
    return [WatchFinding(
        "loss_not_falling", "warn",
        f"the training loss is not falling over {trend.n} logged steps (one-sided "
        f"Mann-Kendall p = {trend.p_decreasing:.2f} >= {ALPHA:g}; Theil-Sen slope "
        f"{trend.slope * 1000:+.3g} per 1000 steps); {ADVICE['loss_not_falling']}",
        str(best.source))]


def gate_log_findings(logs: Sequence[LogSeries], thresholds: GateThresholds
                      ) -> list[WatchFinding]:
    """collapse, falling, deadlock, nan ... by `gatebench gates`' rules, from the one live log
    with the most gate points (train.log, the JSONL and TensorBoard logs repeat each other)."""
    best = max(logs, key=lambda log: len(log.gate_points), default=None)
    if best is None or best.gate_points.empty:
        return []
    report = analyse([], [best], thresholds)
    return [WatchFinding(f.code, f.severity, f.message, f.subject or str(log.source))
            for log, found in report.logs for f in found]


def gate_series_findings(infos: Sequence[Any], thresholds: GateThresholds
                         ) -> list[WatchFinding]:
    """The gate trajectory over the checkpoints evaluated so far (collapse, falling, ...), by
    `gatebench gates`' rules over the same series order; each checkpoint's own gate findings
    are in its results.json (run's pre-flight)."""
    if len(infos) < 2:
        return []
    report = analyse(infos, [], thresholds)
    return [WatchFinding(f.code, f.severity, f.message, f.subject or "checkpoint series")
            for f in report.trajectory_findings]


def control_metric(points: Sequence[Entry], scale: str) -> str | None:
    """The first of CONTROL_METRICS measured at ``scale`` at every point."""
    for name in CONTROL_METRICS:
        if all(_value(e, scale, name) is not None for e in points):
            return name
    return None


def control_finding(points: Sequence[Entry], scale: str) -> list[WatchFinding]:
    """``control_not_growing``: over >= 3 evaluated points the gate rises (last mean gate above
    the first) while the control metric does not (its Theil-Sen slope over the steps <= 0 and
    its last value not above its first)."""
    points = [e for e in points if e.gate_mean is not None]
    if len(points) < 3:
        return []
    name = control_metric(points, scale)
    if name is None:
        return []
    # every point has both (the filter above, control_metric's rule): the conditions only narrow
    gates = [abs(float(e.gate_mean)) for e in points if e.gate_mean is not None]
    values = [v for e in points if (v := _value(e, scale, name)) is not None]
    xs = [float(e.tb_step if e.tb_step is not None else i) for i, e in enumerate(points)]
    trend = mann_kendall(xs, values)
    if gates[-1] <= gates[0] or trend is None or trend.slope > 0 or values[-1] > values[0]:
        return []
    return [WatchFinding(
        "control_not_growing", "warn",
        f"the mean gate rose {gates[0]:.3g} -> {gates[-1]:.3g} over {len(points)} checkpoints "
        f"while {name} at gate scale {scale} did not ({values[0]:.3g} -> {values[-1]:.3g}, "
        f"Theil-Sen slope {trend.slope:+.3g} per step); {ADVICE['control_not_growing']}",
        "trajectory")]


def garbled_finding(entry: Entry) -> list[WatchFinding]:
    """``garbled_images``: a non-zero gate scale garbles more images than the base (scale 0)."""
    base = _value(entry, "0", "garbled_rate") or 0.0
    worse = [(s, v) for s in sorted((entry.headline or {}), key=float) if float(s) != 0
             for v in [_value(entry, s, "garbled_rate")] if v is not None and v > base]
    if not worse:
        return []
    shown = ", ".join(f"{v:.0%} at gate scale {s}" for s, v in worse)
    return [WatchFinding(
        "garbled_images", "warn",
        f"{entry.name}: garbled images {shown} (base model {base:.0%}); "
        + ADVICE["garbled_images"].replace("CHECKPOINT", entry.path), entry.path)]


COMPARE_FILE = "compare_vs_best.json"   # in the newest point's run folder


def regression_finding(best: Entry, newest: Entry, out: Path) -> list[WatchFinding]:
    """``regression_vs_best`` by compare's rule (paired over the same layouts and seeds); its
    document goes to COMPARE_FILE in the newest point's run folder (the watch's verdict reads
    it). Nothing when the two are one point or cannot be paired."""
    from gatebench.compare import regression_gate  # noqa: PLC0415
    from gatebench.rundir.saved import load_run  # noqa: PLC0415

    if best is newest or not (best.results and newest.results and newest.run):
        return []
    try:
        comparison = regression_gate(load_run(out / best.results), load_run(out / newest.results),
                                     verdict_path=out / newest.run / COMPARE_FILE)
    except GatebenchError:
        return []
    if not comparison.regressions:
        return []
    rows = "; ".join(f"{r.metric} at gate scale {r.gate_scale:g} ({r.diff:+.3g})"
                     for r in comparison.regressions if r.diff is not None)
    return [WatchFinding("regression_vs_best", "fail",
                         f"{newest.name} is worse than the best so far, {best.name}, on the "
                         f"paired probe set: {rows}; {ADVICE['regression_vs_best']}",
                         newest.path)]


def pick_metric(protocol: Protocol) -> tuple[str, str]:
    """(metric, gate scale) the best checkpoint is picked by: the protocol's first target at a
    non-zero gate scale, else iou50_rate at its largest non-zero gate scale."""
    for t in protocol.targets:
        for s in t.gate_scales or ():
            if float(s) != 0:
                return t.metric, f"{float(s):g}"
    scales = [s for s in protocol.generation.gate_scales if float(s) != 0] or [1.0]
    return "iou50_rate", f"{max(scales):g}"


def best_entry(points: Sequence[Entry], metric: str, scale: str) -> tuple[Entry, str] | None:
    """The best evaluated point by ``metric`` at ``scale`` (effect_lift when it was measured
    nowhere): (entry, the metric used)."""
    for name in (metric, "effect_lift"):
        valued = [(e, v) for e in points for v in [_value(e, scale, name)]
                  if v is not None and np.isfinite(v)]
        if valued:
            sign = 1.0 if higher_is_better(name) else -1.0
            return max(valued, key=lambda ev: sign * ev[1])[0], name
    return None


def best_record(entry: Entry, metric: str, scale: str, k: int, protocol: Protocol
                ) -> dict[str, Any]:
    """watch.json's ``best``: the pick, its probe-set value, and why that value is optimistic
    (the winner's curse) with the command that measures it on held-out layouts."""
    m = (entry.headline or {}).get(scale, {}).get(metric, {})
    source = protocol.source or protocol.name
    command = (f"gatebench run --ckpt {entry.path} --protocol {source} --gate-scales {scale} "
               f"--layouts HELD_OUT_LAYOUTS.jsonl --out gatebench-heldout")
    return {"path": entry.path, "step": entry.train_step, "tb_step": entry.tb_step, "metric": metric,
            "gate_scale": float(scale), "value": m.get("value"), "ci_low": m.get("ci_low"),
            "ci_high": m.get("ci_high"), "picked_from": k,
            "note": f"picked as the best of {k} checkpoints on the probe layouts, so its value "
                    f"there is biased upward (the winner's curse); the paper's number needs a "
                    f"run on layouts outside the probe set", "held_out_command": command}


def _value(entry: Entry, scale: str, metric: str) -> float | None:
    value = ((entry.headline or {}).get(scale, {}).get(metric) or {}).get("value")
    return None if value is None else float(value)
