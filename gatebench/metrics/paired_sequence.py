"""The regression gate, anytime-valid: paired per-layout differences against the margin.

(In metrics/ rather than gatebench/sequential/ because ``compare`` uses it, and the sequential
package depends on the pipeline that renders compare's output.)

Both runs generate the same layouts with the same seeds, so layout i gives a pair of
(numerator, denominator) records. When the denominators agree per layout (the same ground
truth: scorable boxes, one per image), candidate - baseline is the ratio of the summed numerator
differences to the summed denominators, and a confidence sequence bounds it over the layouts in
decision order. A clear regression (the whole sequence beyond the margin on the bad side) or a
clear non-regression (wholly inside it) is decided at any n with the stated error rate.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd

from gatebench.metrics import confseq
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.regression import sequence_decision

ORDER_RULE = "layouts in a fixed random order: sha256(seed:layout_id)"


def decision_order(layout_ids: Sequence[str], seed: int) -> list[str]:
    """The order layouts enter a sequence (and `run --until-decided` generates them): a pure
    function of the seed and each id, so a larger N keeps the common layouts' relative order
    (and every cached image)."""
    def key(layout_id: str) -> tuple[str, str]:
        return hashlib.sha256(f"{seed}:{layout_id}".encode()).hexdigest(), layout_id
    return sorted(layout_ids, key=key)


@dataclass(frozen=True)
class PairedSequence:
    """One (checkpoint pair, gate scale, metric): the sequence of candidate - baseline."""

    lower: float | None
    upper: float | None
    n: int
    decision: str | None          # "regression" | "no regression" | None
    why: str = ""                 # why no sequence could be formed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decidable(metric: str) -> bool:
    """Whether a paired sequence exists for ``metric`` (per-image and bounded)."""
    spec = metric_spec.get(metric)
    return spec is not None and spec.ratio is not None and spec.value_range is not None


def paired_sequence(cand: pd.DataFrame | None, base: pd.DataFrame | None,
                    order: Sequence[str], metric: str, margin: float, alpha: float,
                    max_boxes: int) -> PairedSequence:
    """``cand`` / ``base``: per-layout ``num``, ``den`` indexed by layout id (layouts without a
    record are units with no information); ``order``: the layouts so far, in decision order."""
    n = len(order)
    if not decidable(metric):
        return PairedSequence(None, None, n, None, "set-level or unbounded: no sequence")
    if cand is None or base is None:
        return PairedSequence(None, None, n, None, "recorded on one side only")
    spec = metric_spec.METRICS[metric]
    assert spec.ratio is not None and spec.value_range is not None
    c = cand.reindex(list(order)).fillna(0.0)
    b = base.reindex(list(order)).fillna(0.0)
    both = (c["den"] > 0) & (b["den"] > 0)
    if not np.allclose(c["den"][both], b["den"][both]):
        return PairedSequence(None, None, n, None,
                              "denominators differ per layout (another detector vocabulary?)")
    if not both.any():
        return PairedSequence(None, None, n, None, "nothing measured on both sides yet")
    diff = np.where(both, c["num"] - b["num"], 0.0)
    den = np.where(both, c["den"], 0.0)
    width = spec.value_range[1] - spec.value_range[0]
    limit = spec.ratio.max_denominator(max_boxes)
    try:
        bounds = confseq.ratio_sequence(diff, den, alpha, -width, width, max(limit, 1))
    except ValueError as exc:   # records outside the metric's stated facts: never guess
        return PairedSequence(None, None, n, None, f"no confidence sequence: {exc}")
    lower, upper = bounds.at_end()
    return PairedSequence(lower, upper, n, sequence_decision(metric, lower, upper, margin))


class GatedRow(Protocol):
    """What a sequence needs of one of compare's rows (compare.CompareRow has it)."""

    @property
    def gated(self) -> bool: ...
    @property
    def gate_scale(self) -> float: ...
    @property
    def metric(self) -> str: ...
    @property
    def margin(self) -> float | None: ...


def compare_sequences(pairs: dict[int, tuple[pd.DataFrame, pd.DataFrame]],
                      rows: Sequence[GatedRow], *, seed: int,
                      alpha: float) -> dict[int, PairedSequence]:
    """`compare`: the anytime-valid bounds of every gated paired row at a non-zero gate scale,
    alpha split (Bonferroni) over them; ``pairs``: row index -> (candidate, baseline) units
    of the layouts both runs recorded. The layouts enter in the decision order of ``seed``, as
    a `run --until-decided` takes them."""
    chosen = [i for i in pairs if rows[i].gated and rows[i].gate_scale != 0.0
              and decidable(rows[i].metric)]
    if not chosen:
        return {}
    alpha_each = confseq.split_alpha(alpha, len(chosen))
    out = {}
    for i in chosen:
        cand, base = pairs[i]
        order = decision_order([str(x) for x in cand.index], seed)
        max_den = int(max(cand["den"].max(), base["den"].max(), 1))
        margin = rows[i].margin
        assert margin is not None           # gated rows have one
        out[i] = paired_sequence(cand, base, order, rows[i].metric, margin, alpha_each, max_den)
    return out
