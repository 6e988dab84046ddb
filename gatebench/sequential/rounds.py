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
from typing import Any, Callable, Sequence

import pandas as pd

from gatebench.adapters.types import CheckpointInfo
from gatebench.errors import GatebenchError
from gatebench.generate import GenerationStats, Sampler
from gatebench.image_cache import KeptImages
from gatebench.layouts import Layout
from gatebench.metrics import spec as metric_spec
from gatebench.plan import LoadedAdapters, generate_all
from gatebench.protocol import Protocol
from gatebench.rundir.saved import checkpoint_labels
from gatebench.score import ImageItem
from gatebench.score_run import score_sets
from gatebench.sequential.decide import (ORDER_RULE, Decision, RunCell, decide_verdict,
                                         decision_order, round_sizes)


@dataclass
class RoundsResult:
    """What the rounds made: the items and layouts generated, in the protocol's order."""

    items: dict[tuple[str, float], list[ImageItem]]
    stats: GenerationStats
    caches: list[dict]
    layouts: list[Layout]
    decision: Decision
    rounds: list[dict[str, Any]] = field(default_factory=list)


class _PerImageOnly:
    """The evaluation models without the FID/KID feature extractor: a round needs only each
    image's own record, and features of every round would be extracted twice."""

    def __init__(self, models: Any) -> None:
        self._models = models

    def score_kwargs(self) -> dict[str, Any]:
        return {**self._models.score_kwargs(), "fid_extractor": None, "real_images": None}


def _add_stats(total: GenerationStats, part: GenerationStats) -> None:
    for f in dataclasses.fields(GenerationStats):
        value = getattr(part, f.name)
        if isinstance(value, list):
            getattr(total, f.name).extend(value)
        else:
            setattr(total, f.name, getattr(total, f.name) + value)


def generate_until_decided(base: Any, sampler: Sampler, infos: Sequence[CheckpointInfo],
                           layouts: Sequence[Layout], protocol: Protocol, eval_models: Any, *,
                           root: Path, batch: int, keep: KeptImages | None,
                           adapters: LoadedAdapters | None, world: int,
                           progress: Callable[[int], None] | None = None) -> RoundsResult:
    """Rounds of ``protocol.scoring.round_layouts`` layouts until the decision or N."""
    if world > 1:
        raise GatebenchError("--until-decided runs in one process: each round's decision needs "
                             "every image, and ranks would wait on each other every round",
                             hint="run it without torchrun, or drop --until-decided")
    scoring = protocol.scoring
    by_id = {lay.layout_id: lay for lay in layouts}
    order = decision_order(list(by_id), protocol.seed)
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    labels = checkpoint_labels(info.path for info in infos)
    cells = [RunCell(str(info.path), labels[str(info.path)], s) for info in infos
             for s in scales]
    # a layout's box count bounds its per-box sums (the protocol may keep fewer boxes)
    max_boxes = max((len(lay.objects) for lay in layouts), default=1)
    items: dict[tuple[str, float], list[ImageItem]] = {}
    stats, caches = GenerationStats(), []
    frames: list[pd.DataFrame] = []
    nonfinite: dict[tuple[str, float], int] = {}
    rounds: list[dict[str, Any]] = []
    done = 0
    decision: Decision | None = None
    for n in round_sizes(len(order), scoring.round_layouts):
        new = [by_id[i] for i in order[done:n]]
        part, part_stats, caches = generate_all(base, sampler, infos, new, protocol, root=root,
                                                batch=batch, progress=progress, keep=keep,
                                                adapters=adapters)
        _add_stats(stats, part_stats)
        for key, group in part.items():
            items.setdefault(key, []).extend(group)
        samples, rows = score_sets(part, infos, scales, protocol, _PerImageOnly(eval_models),
                                   root.parent / "cache")
        frames.append(samples)
        for row in rows:
            key = (row["checkpoint"], float(row["gate_scale"]))
            nonfinite[key] = nonfinite.get(key, 0) + int(row.get("nonfinite_images", 0))
        done = n
        decision = decide_verdict(pd.concat(frames, ignore_index=True), order[:n],
                                  protocol.targets, cells, alpha=scoring.decision_alpha,
                                  max_boxes=max_boxes, nonfinite=nonfinite)
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
                        decision, rounds)


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
            "rounds": result.rounds, "rows": [row.to_dict() for row in decision.rows]}
