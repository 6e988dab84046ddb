"""A saved run's per-sample records as the paired gates read them: one checkpoint at one gate
scale, and each layout's (numerator, denominator) of a per-image metric.

`compare`'s bootstrap rows and the anytime-valid sequences (`run --until-decided`, the regression
gate's rows) read records through these two functions, so both pair the same units.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gatebench.metrics import spec as metric_spec


def records_at(samples: pd.DataFrame, label: str, scale: float) -> pd.DataFrame:
    """The records of one checkpoint (samples name it by its label) at one gate scale."""
    df = samples[samples["checkpoint"].astype(str) == label] if "checkpoint" in samples else samples
    return df[np.isclose(pd.to_numeric(df["gate_scale"], errors="coerce").astype(float), scale)]


def metric_units(df: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """Per-layout (numerator, denominator) of one per-image metric; None when not recorded.

    The images and their (num, den) come from ``spec.units``, the rule score aggregates by;
    here images without a recorded value or with nothing to average are left out of the pairs.
    """
    ratio = metric_spec.METRICS[metric].ratio
    assert ratio is not None, f"{metric} is set-level"
    units = metric_spec.units(df, ratio)
    units = units[units["num"].notna() & (units["den"] > 0)]
    if units.empty:
        return None
    units = units.assign(layout_id=units["layout_id"].astype(str))
    return units.groupby("layout_id", sort=True)[["num", "den"]].sum()
