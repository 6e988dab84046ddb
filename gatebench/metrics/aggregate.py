"""Aggregation: per-sample records (and a set's set-level inputs) -> every metric of the table.

A per-image metric is bootstrapped from its spec's ratio (the same ``spec.units`` compare pairs);
a set-level one is the ``@set_value`` function below that its table entry names
(``MetricSpec.set_value``), over ``SetInputs``. Adding a set-level metric: its ``MetricSpec``
entry plus that function.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gatebench.errors import MetricError
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.coco_ap import APImage, coco_ap
from gatebench.metrics.fid_maths import (
    feature_stats,
    fid_from_features,
    fid_route,
    frechet_distance,
    kid,
    kid_route,
)
from gatebench.metrics.stats import MetricValue, bootstrap_ci
from gatebench.metrics.timing import StageTimer, phase

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from gatebench.metrics.fid import ReferenceStats


@dataclass
class SetInputs:
    """What the set-level metrics of one set (or one gate scale's subset) are computed from."""

    ap_images: list[APImage]                  # one per image, in the records' order
    n_scorable: float                         # scorable GT boxes over the set
    reference: ReferenceStats | None = None   # the real images' FID statistics
    fake_feats: np.ndarray | None = None      # this set's FID features (rows: its images)
    seed: int = 0                             # KID's subset draws
    fid_device: str | None = None             # the scoring device for FID/KID maths (None: numpy)

    @property
    def has_fid(self) -> bool:
        return self.reference is not None and self.fake_feats is not None

    @cached_property
    def coco(self) -> dict[str, float]:
        """COCO AP over the set, once for ap50 and ap."""
        return coco_ap(self.ap_images)

    @cached_property
    def fid_route(self) -> dict[str, Any]:
        """How FID and KID are computed for this set (recorded in the score's info)."""
        assert self.reference is not None and self.fake_feats is not None
        n_real, fake = len(self.reference.features), self.fake_feats
        return {"fid": fid_route(n_real, len(fake), fake.shape[1]),
                "kid": kid_route(n_real, len(fake)), "device": self.fid_device or "cpu",
                "n_real": n_real, "n_fake": len(fake)}


SetValue = Callable[[SetInputs], "MetricValue | str"]
SET_VALUES: dict[str, SetValue] = {}


def set_value(name: str) -> Callable[[SetValue], SetValue]:
    """Register a set-level metric's function under ``name`` (its ``MetricSpec.set_value``)."""
    def register(fn: SetValue) -> SetValue:
        SET_VALUES[name] = fn
        return fn
    return register


# --- the set-level metrics: MetricValue, or why it is not computed ------------------------------
@set_value("ap50")
def ap50_value(inputs: SetInputs) -> MetricValue | str:
    if inputs.n_scorable == 0:
        return metric_spec.NO_SCORABLE
    return MetricValue(inputs.coco["ap50"], None, None, int(inputs.n_scorable))


@set_value("ap")
def ap_value(inputs: SetInputs) -> MetricValue | str:
    if inputs.n_scorable == 0:
        return metric_spec.NO_SCORABLE
    return MetricValue(inputs.coco["ap"], None, None, int(inputs.n_scorable))


@set_value("fid")
def fid_value(inputs: SetInputs) -> MetricValue | str:
    assert inputs.reference is not None and inputs.fake_feats is not None
    fake, ref, dev = inputs.fake_feats, inputs.reference, inputs.fid_device
    if inputs.fid_route["fid"] == "nuclear-norm":   # both sets' features at hand: no D x D maths
        value = fid_from_features(ref.features, fake, device=dev)
    else:                                 # one eigendecomposition with the cached sqrt(S_ref)
        mu, sigma = feature_stats(fake)
        value = frechet_distance(ref.mu, ref.sigma, mu, sigma, sqrt_sigma1=ref.sigma_sqrt(dev),
                                 device=dev)
    return MetricValue(value, None, None, len(fake))


@set_value("kid")
def kid_value(inputs: SetInputs) -> MetricValue | str:
    assert inputs.reference is not None and inputs.fake_feats is not None
    value, _ = kid(inputs.reference.features, inputs.fake_feats, seed=inputs.seed,
                   device=inputs.fid_device)
    return MetricValue(value, None, None, len(inputs.fake_feats))


def aggregate(frame: pd.DataFrame, inputs: SetInputs, have: dict[str, bool], *, n_boot: int,
              level: float, seed: int, timer: StageTimer | None = None
              ) -> tuple[dict[str, MetricValue], dict[str, str]]:
    """Every metric of the table over ``frame`` (its per-sample records) and ``inputs``: those
    whose need is not in ``have`` are not computed, with ``NEED_REASONS``' reason. ``timer``:
    charged ``metric:<name>`` for each metric computed (its units and CI, or its set value)."""
    kw: dict[str, Any] = {"n_boot": n_boot, "level": level, "seed": seed}
    out: dict[str, MetricValue] = {}
    skip: dict[str, str] = {}
    for m in metric_spec.METRICS.values():
        if not have[m.needs]:
            skip[m.name] = metric_spec.NEED_REASONS[m.needs]
        elif m.ratio is not None:
            with phase(timer, f"metric:{m.name}"):
                u = metric_spec.units(frame, m.ratio)
                if m.ratio.empty_reason and not u["den"].sum() > 0:
                    skip[m.name] = _empty_reason(frame, m.ratio)
                    continue
                denom = u["den"].to_numpy() if m.ratio.denominator is not None else None
                out[m.name] = bootstrap_ci(u["num"].to_numpy(), denom,
                                           groups=list(u["layout_id"]), **kw)
        else:
            compute = SET_VALUES.get(m.set_value or "")
            if compute is None:
                raise MetricError(f"expected a set-level function for '{m.name}' in "
                                  f"metrics/aggregate.py, got '{m.set_value}'")
            with phase(timer, f"metric:{m.name}"):
                value = compute(inputs)
            if isinstance(value, str):
                skip[m.name] = value
            else:
                out[m.name] = value
    return out, skip


@dataclass
class SetAggregator:
    """A scored set's aggregation: all its images, then each gate scale's."""

    have: dict[str, bool]                  # which needs (``spec.Need``) are configured
    ap_images: list[APImage]               # one per image, in the records' order
    reference: ReferenceStats | None
    fake_feats: np.ndarray | None          # one row per image
    n_boot: int
    level: float
    seed: int
    fid_device: str | None = None          # the scoring device for FID/KID maths (None: numpy)
    timer: StageTimer | None = None        # the bench's phase split (metrics/timing.py)

    def over(self, frame: pd.DataFrame, idx: np.ndarray
             ) -> tuple[dict[str, MetricValue], dict[str, str], dict[str, Any] | None]:
        """(metrics, not computed, FID/KID route) of the images ``idx`` (``frame``: their rows)."""
        inputs = SetInputs([self.ap_images[i] for i in idx],
                           float(frame["n_scorable"].to_numpy(dtype=float).sum()), self.reference,
                           None if self.fake_feats is None else self.fake_feats[idx], self.seed,
                           self.fid_device)
        metrics, skip = aggregate(frame, inputs, self.have, n_boot=self.n_boot, level=self.level,
                                  seed=self.seed, timer=self.timer)
        return metrics, skip, inputs.fid_route if self.have["fid"] else None

    def all_and_by_scale(self, frame: pd.DataFrame, gate_scales: list[float | None],
                         drop: dict[str, str]
                         ) -> tuple[dict[str, MetricValue], dict[str, str],
                                    dict[float | None, dict[str, MetricValue]], dict[str, Any]]:
        """(metrics, not computed, metrics by gate scale, FID/KID route by set) of ``frame``
        (one row per image, ``gate_scales`` theirs); the metrics in ``drop`` are not computed,
        for its reason. No scale (all None): no per-scale metrics."""
        metrics, not_computed, route = self.over(frame, np.arange(len(gate_scales)))
        for name, reason in drop.items():
            metrics.pop(name, None)
            not_computed[name] = reason
        routes = {"all": route}
        by_scale: dict[float | None, dict[str, MetricValue]] = {}
        scales = list(dict.fromkeys(gate_scales))
        if any(s is not None for s in scales):
            for scale in scales:
                idx = np.array([i for i, g in enumerate(gate_scales) if g == scale])
                values, _, routes["none" if scale is None else f"{scale:g}"] = self.over(
                    frame.iloc[idx], idx)
                by_scale[scale] = {k: v for k, v in values.items() if k not in drop}
        return metrics, not_computed, by_scale, routes


def _empty_reason(frame: pd.DataFrame, ratio: metric_spec.Ratio) -> str:
    """Why no image counts: the images' own most common reason when they record one."""
    if ratio.reason is not None and ratio.reason in frame.columns:
        reasons = frame[ratio.reason].dropna()
        if len(reasons):
            return str(reasons.mode().iloc[0])
    return ratio.empty_reason
