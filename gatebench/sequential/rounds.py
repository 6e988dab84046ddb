"""The rounds of `run --until-decided`: generate a round of layouts, score its images per image,
update every target's confidence sequence, stop when the verdict is decided or at N.

Each round generates only its new layouts (in whole batches); images already cached by an
earlier run or a larger N are reused, since image paths and seeds are pure functions of the
recipe and the layout id. Rounds score per image only (no FID/KID features): the set-level
metrics cannot decide early and are computed once, by run.py's final scoring pass, on the n
layouts generated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from gatebench.adapters.types import CheckpointInfo
from gatebench.errors import GatebenchError
from gatebench.generate import GenerationStats, Sampler
from gatebench.image_cache import KeptImages
from gatebench.layouts import Layout
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.health_prefetch import HealthPrefetch
from gatebench.metrics.paired_sequence import ORDER_RULE, decidable, decision_order, paired_sequence
from gatebench.metrics.regression import NO_REGRESSION, REGRESSION
from gatebench.plan import LoadedAdapters, generate_all
from gatebench.protocol import Protocol
from gatebench.rundir.pairing import gate_scales, pair_checkpoints
from gatebench.rundir.records import metric_units, records_at
from gatebench.rundir.saved import SavedRun, checkpoint_labels, label_map
from gatebench.score import ImageItem
from gatebench.score_run import score_sets
from gatebench.sequential.decide import Decision, RunCell, decide_verdict, round_sizes

if TYPE_CHECKING:
    from gatebench.metrics.evalmodels import EvalModels
    from gatebench.models.base import BaseModel


@dataclass
class RoundsResult:
    """What the rounds made: the items and layouts generated, in the protocol's order."""

    items: dict[tuple[str, float], list[ImageItem]]
    stats: GenerationStats
    caches: list[dict]
    layouts: list[Layout]
    decision: Decision
    rounds: list[dict[str, Any]] = field(default_factory=list)
    regression: list[dict[str, Any]] = field(default_factory=list)   # the baseline gate's rows


@dataclass(frozen=True)
class GateCell:
    """One regression-gate row decided by a sequence: candidate vs baseline at a scale."""

    baseline: str                 # path (results rows) and label (samples) on each side
    baseline_label: str
    candidate: str
    candidate_label: str
    gate_scale: float
    metric: str
    margin: float


def gate_cells(baseline: SavedRun | None, cells: Sequence[RunCell]) -> list[GateCell]:
    """`run --baseline`: every (checkpoint pair, non-zero common gate scale, metric with a
    default margin) row compare would gate. Scale 0 is the base model in both runs (the
    comparability rules make it the same images), so it decides nothing."""
    if baseline is None:
        return []
    b_labels = label_map(baseline.results)
    c_labels = {c.checkpoint: c.label for c in cells}
    scales = sorted({c.gate_scale for c in cells} & set(gate_scales(baseline.results)) - {0.0})
    return [GateCell(b, b_labels[b], c, c_labels[c], s, metric, margin)
            for _, b, c in pair_checkpoints(list(b_labels), list(c_labels)) for s in scales
            for metric, margin in metric_spec.DEFAULT_MARGINS.items() if decidable(metric)]


def gate_rows(gates: Sequence[GateCell], samples: pd.DataFrame, baseline: SavedRun,
              order: Sequence[str], alpha_each: float, max_boxes: int) -> list[dict[str, Any]]:
    """Each gate row's sequence of candidate - baseline over the layouts so far."""
    rows = []
    for g in gates:
        cand = records_at(samples, g.candidate_label, g.gate_scale)
        base = records_at(baseline.samples, g.baseline_label, g.gate_scale)
        seq = paired_sequence(metric_units(cand, g.metric), metric_units(base, g.metric),
                              order, g.metric, g.margin, alpha_each, max_boxes)
        rows.append({"baseline_checkpoint": g.baseline, "candidate_checkpoint": g.candidate,
                     "gate_scale": g.gate_scale, "metric": g.metric, "margin": g.margin,
                     **seq.to_dict()})
    return rows


def _combine(decision: Decision, rows: Sequence[dict[str, Any]], n: int) -> Decision:
    """The targets' decision with the regression gate's: a clear regression fails the run (as
    `run --baseline` does); a pass needs every gate row clearly not a regression too."""
    if not rows or decision.decided == "fail":
        return decision
    hit = next((r for r in rows if r["decision"] == REGRESSION), None)
    if hit is not None:
        return dataclasses.replace(decision, decided="fail", reason=(
            f"regression: {hit['metric']} at gate scale {hit['gate_scale']:g} of "
            f"{hit['candidate_checkpoint']} vs the baseline: the sequence of the difference "
            f"[{hit['lower']:+.3f}, {hit['upper']:+.3f}] lies beyond the margin "
            f"{hit['margin']:g} after {n} layouts"))
    if decision.decided == "pass" and any(r["decision"] != NO_REGRESSION for r in rows):
        return dataclasses.replace(decision, decided=None, reason=(
            "the targets are decided PASS; the regression gate is not yet decided"))
    return decision


class _PerImageOnly:
    """The evaluation models without the FID/KID feature extractor: a round needs only each
    image's own record, and features of every round would be extracted twice."""

    def __init__(self, models: EvalModels) -> None:
        self._models = models

    def score_kwargs(self) -> dict[str, Any]:
        return {**self._models.score_kwargs(), "fid_extractor": None, "real_images": None}


def _unconfigured(not_computed: dict[str, str]) -> dict[str, str]:
    """The metrics not computed because their model is not configured (a detector, a CLIP):
    more layouts cannot change that, unlike a round without a scorable box."""
    permanent = {metric_spec.NEED_REASONS[need] for need in ("detector", "clip")}
    return {m: why for m, why in not_computed.items() if why in permanent}


def _add_stats(total: GenerationStats, part: GenerationStats) -> None:
    for f in dataclasses.fields(GenerationStats):
        value = getattr(part, f.name)
        if isinstance(value, list):
            getattr(total, f.name).extend(value)
        else:
            setattr(total, f.name, getattr(total, f.name) + value)


def generate_until_decided(base: BaseModel, sampler: Sampler, infos: Sequence[CheckpointInfo],
                           layouts: Sequence[Layout], protocol: Protocol,
                           eval_models: EvalModels | None, *,
                           root: Path, batch: int, keep: KeptImages | None,
                           adapters: LoadedAdapters | None, world: int,
                           progress: Callable[[int], None] | None = None,
                           baseline: SavedRun | None = None,
                           health: HealthPrefetch | None = None) -> RoundsResult:
    """Rounds of ``protocol.scoring.round_layouts`` layouts until the decision or N."""
    if world > 1:
        raise GatebenchError("--until-decided runs in one process: each round's decision needs "
                             "every image, and ranks would wait on each other every round",
                             hint="run it without torchrun, or drop --until-decided")
    assert eval_models is not None      # the one process (rank 0) loads them before generating
    scoring = protocol.scoring
    by_id = {lay.layout_id: lay for lay in layouts}
    order = decision_order(list(by_id), protocol.seed)
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    labels = checkpoint_labels(info.path for info in infos)
    cells = [RunCell(str(info.path), labels[str(info.path)], s) for info in infos
             for s in scales]
    # a layout's box count bounds its per-box sums (the protocol may keep fewer boxes)
    max_boxes = max((len(lay.objects) for lay in layouts), default=1)
    gates = gate_cells(baseline, cells)
    gate_now: list[dict[str, Any]] = []
    items: dict[tuple[str, float], list[ImageItem]] = {}
    stats = GenerationStats()
    caches: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    nonfinite: dict[tuple[str, float], int] = {}
    unavailable: dict[str, str] = {}
    rounds: list[dict[str, Any]] = []
    done = 0
    decision: Decision | None = None
    for n in round_sizes(len(order), scoring.round_layouts):
        new = [by_id[i] for i in order[done:n]]
        part, part_stats, caches = generate_all(base, sampler, infos, new, protocol, root=root,
                                                batch=batch, progress=progress, keep=keep,
                                                adapters=adapters, health=health)
        _add_stats(stats, part_stats)
        for key, group in part.items():
            items.setdefault(key, []).extend(group)
        samples, rows = score_sets(part, infos, scales, protocol, _PerImageOnly(eval_models),
                                   root.parent / "cache", health=health)
        frames.append(samples)
        for row in rows:
            key = (row["checkpoint"], float(row["gate_scale"]))
            nonfinite[key] = nonfinite.get(key, 0) + int(row.get("nonfinite_images", 0))
            unavailable.update(_unconfigured(row.get("not_computed") or {}))
        done = n
        so_far = pd.concat(frames, ignore_index=True)
        decision = decide_verdict(so_far, order[:n], protocol.targets, cells,
                                  alpha=scoring.decision_alpha, max_boxes=max_boxes,
                                  nonfinite=nonfinite, other_decisions=len(gates),
                                  unavailable=unavailable)
        if baseline is not None:
            gate_now = gate_rows(gates, so_far, baseline, order[:n], decision.alpha_each,
                                 max_boxes)
            decision = _combine(decision, gate_now, n)
        rounds.append({"n_layouts": n, "decided": decision.decided})
        if decision.decided is not None:
            break
    assert decision is not None
    # the final scoring sees the layouts in the protocol's own order: a run that reaches N
    # then scores exactly as a fixed-N run (bootstrap resamples by position)
    position = {lay.layout_id: i for i, lay in enumerate(layouts)}
    for group in items.values():
        group.sort(key=lambda item: position[item.layout.layout_id])
    chosen = set(order[:done])
    return RoundsResult(items, stats, caches, [lay for lay in layouts if lay.layout_id in chosen],
                        decision, rounds, gate_now)


def sequential_record(result: RoundsResult, protocol: Protocol, max_layouts: int,
                      set_level: Sequence[str]) -> dict[str, Any]:
    """results.json's ``sequential``: where and why the run stopped, every row's bounds."""
    decision = result.decision
    n = len(result.layouts)
    return {"alpha": decision.alpha, "alpha_each": decision.alpha_each,
            "decisions": decision.decisions, "split": decision.split_text(),
            "round_layouts": protocol.scoring.round_layouts, "n_layouts": n,
            "max_layouts": max_layouts, "stopped_early": n < max_layouts,
            "decided": decision.decided,
            "reason": decision.reason if decision.decided else
            f"no verdict decided before N = {max_layouts} ({decision.reason})",
            "order": f"{ORDER_RULE}, seed {protocol.seed}",
            "set_level": [m for m in set_level if metric_spec.is_set_level(m)],
            "rounds": result.rounds, "rows": [row.to_dict() for row in decision.rows],
            "regression_rows": result.regression}
