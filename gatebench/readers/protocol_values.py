"""Value ranges of protocol fields and the CLI flags that override them.

A type check alone lets ``num_samples = -2`` (every layout), ``collapse_fraction = 7.5`` (collapse
can never fire) or ``ci_level = 7.0`` (fails after every image is generated) through. Each field
that has a meaningful range is checked here, from the TOML file and from flags alike, so the error
comes before any model loads and names the field or the flag.
"""
from __future__ import annotations

import math
import re
from typing import Any

from gatebench.errors import GatebenchError

# The one map from a command-line flag (its Python name) to the protocol field it overrides:
# (section, key), section None for a top-level key. `gatebench run` offers each of them.
FLAG_FIELDS: dict[str, tuple[str | None, str]] = {
    "seed": (None, "seed"), "num_samples": (None, "num_samples"),
    "gate_scales": ("generation", "gate_scales"), "steps": ("generation", "steps"),
    "dtype": ("generation", "dtype"), "device": ("generation", "device"),
    "batch_size": ("generation", "batch_size"), "layouts": ("data", "layouts"),
    "base_model": ("models", "base_model"),
    "garbled_threshold": ("scoring", "garbled_threshold"),
    "blank_threshold": ("scoring", "blank_threshold"),
    "until_decided": ("scoring", "until_decided"),
}


def flag_name(key: str) -> str:
    """``num_samples`` -> ``--num-samples``."""
    return "--" + key.replace("_", "-")


def flag_for(section: str | None, key: str) -> str | None:
    """The flag that overrides ``[section] key``, or None when only the protocol sets it."""
    return next((flag_name(k) for k, field in FLAG_FIELDS.items() if field == (section, key)),
                None)


def check_flag(key: str, value: Any) -> None:
    """A flag's value in its protocol field's range (``--num-samples 0``, ``--device tpu9``):
    exit 2 naming the flag, before any model loads."""
    problem = value_problem(*FLAG_FIELDS[key], value) if key in FLAG_FIELDS else None
    if problem:
        raise GatebenchError(f"{flag_name(key)}: {problem}", hint="see the command's --help")

# (section, key) -> (low, high, low_open, high_open); None: unbounded on that side.
RANGES: dict[tuple[str | None, str], tuple[float | None, float | None, bool, bool]] = {
    (None, "seed"): (0, 2 ** 63 - 1, False, False),
    (None, "num_samples"): (1, None, False, False),
    ("data", "min_area"): (0, 1, False, False), ("data", "max_area"): (0, 1, True, False),
    ("data", "min_side"): (0, 1, False, False), ("data", "max_boxes"): (1, None, False, False),
    ("generation", "gate_scales"): (None, None, False, False),
    ("generation", "steps"): (1, None, False, False),
    ("generation", "grounding_fraction"): (0, 1, False, False),
    ("generation", "height"): (8, None, False, False),
    ("generation", "width"): (8, None, False, False),
    ("generation", "batch_size"): (1, None, False, False),
    ("generation", "phrase_max_length"): (1, None, False, False),
    ("detection", "conf"): (0, 1, False, False), ("detection", "iou"): (0, 1, False, False),
    ("detection", "imgsz"): (32, None, False, False),
    ("detection", "batch_size"): (1, None, False, False),
    ("detection", "relation_min_sep"): (0, 1, True, False),
    ("detection", "relation_margin"): (0, 1, False, True),
    ("detection", "relation_min_iou"): (0, 1, False, True),
    ("detection", "box_threshold"): (0, 1, False, True),
    ("detection", "text_threshold"): (0, 1, False, True),
    ("scoring", "match_iou"): (0, 1, True, False), ("scoring", "bootstrap"): (0, None, False, False),
    ("scoring", "ci_level"): (0, 1, True, True),
    # health scores lie in [0, 1]: a threshold outside (0, 1) flags every image or none
    ("scoring", "garbled_threshold"): (0, 1, True, True),
    ("scoring", "blank_threshold"): (0, 1, True, True),
    ("scoring", "decision_alpha"): (0, 1, True, True),
    ("scoring", "round_layouts"): (1, None, False, False),
    ("gates", "near_zero"): (0, None, False, False), ("gates", "saturated"): (0, 1, True, False),
    ("gates", "healthy_mean_low"): (0, 1, False, False),
    ("gates", "healthy_mean_high"): (0, 1, False, False),
    ("gates", "near_zero_share_max"): (0, 1, False, False),
    ("gates", "saturated_share_max"): (0, 1, False, False),
    ("gates", "collapse_fraction"): (0, 1, True, False),
    ("gates", "collapse_min_peak"): (0, None, False, False),
    ("gates", "falling_fraction"): (0, 1, True, False),
    ("gates", "not_learning_steps"): (0, None, False, False),
    ("gates", "not_learning_tol"): (0, None, False, False),
    ("gates", "rise_steps"): (0, None, False, False),
}
NON_EMPTY = {("generation", "gate_scales")}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def value_problem(section: str | None, key: str, value: Any) -> str | None:
    """Why ``value`` is out of range for ``[section] key`` (None when it is fine).

    Every float must be finite (NaN/Inf mean nothing in a protocol); ranged fields must lie in
    their range; a list field that must not be empty is not."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if (section, key) in NON_EMPTY and not values:
        return "expected at least one value, got an empty list"
    if key == "device" and isinstance(value, str) and not DEVICE.match(value):
        return f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}"
    limits = RANGES.get((section, key))
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"expected a finite number, got {v}"
        if limits is None:
            continue
        low, high, low_open, high_open = limits
        bad = (low is not None and (v <= low if low_open else v < low)) or \
              (high is not None and (v >= high if high_open else v > high))
        if bad:
            return f"expected a value {_range_text(*limits)}, got {v:g}"
    return None
