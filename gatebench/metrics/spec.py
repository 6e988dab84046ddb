"""The metric table: every fact about a metric that more than one module needs, in one place.

Why: direction, set-level-ness, margins and above all the numerator/denominator rule of each
per-image metric used to be restated in score, compare, the report, LaTeX and plots; when two
copies drift, ``compare`` gates a different number than ``run`` reports. Like torchmetrics'
``higher_is_better`` on the metric class, the facts live with the metric; unlike it, the
computation stays in ``gatebench.metrics.*`` and ``gatebench.score``. Adding a metric is one
``MetricSpec`` below plus its computation (a per-sample column for a per-image metric; for a
set-level one, the ``@set_value`` function in ``gatebench.metrics.aggregate`` its entry names).

Imports nothing heavy (pandas lazily), so ``gatebench.protocol`` can validate names from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

Level = Literal["image", "set"]      # image: paired per layout, bootstrapped; set: one number
Need = Literal["detector", "clip", "fid", "adapter", "none"]

# Why a metric is absent when what it needs is not configured (score's ``not_computed``).
NEED_REASONS: dict[str, str] = {
    "detector": "no detector or detections configured",
    "clip": "no CLIP model configured",
    "fid": "no FID feature extractor and real images configured",
    "adapter": ("no write diagnostics recorded: the adapter is off (gate scale 0) or the images "
                "were made elsewhere"),
}
NAMED_MARGIN = 0.02   # --metric NAME without a value, for a metric with no default margin
# garbled_rate / blank_rate count images whose health score (metrics.health, which calibrates
# them) is above these; the protocol's [scoring] defaults are these same numbers.
GARBLED_THRESHOLD = 0.5
BLANK_THRESHOLD = 0.5
NO_SCORABLE = "no ground-truth box has a class the detector can name"
NO_PAIRS = ("no pair of scorable ground-truth boxes whose centres differ by at least the "
            "protocol's relation_min_sep")
NO_MATCHED_PAIRS = "no pair of scorable boxes with a relation had both boxes detected"


@dataclass(frozen=True)
class Ratio:
    """How a per-image metric aggregates: sum(numerator) / sum(denominator) over images.

    ``denominator`` None: one per image (the mean). ``weighted``: the numerator column is itself
    a per-image mean over ``denominator`` items (region CLIP over boxes), multiplied back to a
    sum. ``where``: a column that must be > 0 for an image to count at all (all_matched_rate
    counts only images with a scorable box). An image with a zero denominator weighs nothing.
    ``empty_reason``: why the metric is absent when no image has a positive denominator;
    ``reason``: a column of per-image reasons that, when present, says it more precisely.
    ``per_box``: the denominator counts a layout's boxes; otherwise it is at most 1 per image
    (what bounds a layout's sums, for the sequential decision: gatebench.sequential).
    """

    numerator: str
    denominator: str | None = None
    weighted: bool = False
    where: str | None = None
    empty_reason: str = ""
    reason: str | None = None
    per_box: bool = False       # the denominator counts boxes (<= a layout's boxes), else <= 1
    per_pair: bool = False      # the denominator counts pairs of boxes (<= n(n-1)/2)

    def max_denominator(self, max_boxes: int) -> int:
        """The most one layout's denominator can be, with at most ``max_boxes`` boxes."""
        if self.per_pair:
            return max(1, max_boxes * (max_boxes - 1) // 2)
        return max(1, max_boxes) if self.per_box else 1


@dataclass(frozen=True)
class MetricSpec:
    """One metric's facts; ``ratio`` for per-image metrics, None for set-level ones, which name
    in ``set_value`` the function of ``gatebench.metrics.aggregate`` that computes them (the
    hook: a name, so that this table imports nothing heavy)."""

    name: str
    higher_is_better: bool
    level: Level
    needs: Need
    tex: str                            # TeX name; the arrow comes from higher_is_better
    unit: str                           # what the value is (all print with render's ``fmt``)
    n_of: str                           # what its N counts
    definition: str                     # one line, for a report's definitions
    ratio: Ratio | None = None
    default_margin: float | None = None  # compare gates it by default (None: only when named)
    headline: bool = False               # shown on a narrow terminal
    set_value: str | None = None         # set-level: its @set_value name, metrics/aggregate.py
    # per-image: the range every image's value lies in (numerator / denominator); None when
    # unbounded, which a confidence sequence cannot bound (it never decides early)
    value_range: tuple[float, float] | None = None

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def tex_label(self) -> str:
        return self.tex + (r" $\uparrow$" if self.higher_is_better else r" $\downarrow$")


def _image(name: str, higher: bool, needs: Need, tex: str, unit: str, n_of: str,
           definition: str, ratio: Ratio, margin: float, headline: bool = False) -> MetricSpec:
    """A per-image share or score in [0, 1]."""
    return MetricSpec(name, higher, "image", needs, tex, unit, n_of, definition, ratio, margin,
                      headline, value_range=(0.0, 1.0))


def _set(name: str, higher: bool, needs: Need, tex: str, unit: str, n_of: str,
         definition: str, headline: bool = False) -> MetricSpec:
    return MetricSpec(name, higher, "set", needs, tex, unit, n_of, definition, None, None,
                      headline, set_value=name)


_BOX = "scorable boxes"
_NO_WRITE = NEED_REASONS["adapter"]
METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    _image("iou50_rate", True, "detector", r"IoU$>$0.5 rate", "share in [0, 1]", _BOX,
           "share of scorable GT boxes matched one-to-one by a same-class detection, IoU > 0.5",
           Ratio("n_matched", "n_scorable", empty_reason=NO_SCORABLE, per_box=True), 0.02,
           headline=True),
    _image("miou", True, "detector", "mIoU", "IoU in [0, 1]", _BOX,
           "mean IoU over scorable GT boxes (0 when unmatched)",
           Ratio("iou_sum", "n_scorable", empty_reason=NO_SCORABLE, per_box=True), 0.02,
           headline=True),
    _set("ap50", True, "detector", r"AP$_{50}$", "AP in [0, 1]", _BOX,
         "COCO-style AP at IoU 0.5 over all images and GT classes"),
    _set("ap", True, "detector", "AP", "AP in [0, 1]", _BOX,
         "COCO-style AP averaged over IoU 0.5:0.95"),
    _image("all_matched_rate", True, "detector", "All-matched rate", "share in [0, 1]", "images",
           "share of images (with a scorable box) whose every scorable box is matched",
           Ratio("all_matched", where="n_scorable", empty_reason=NO_SCORABLE), 0.02),
    _image("relation_rate", True, "detector", "Relation rate", "share in [0, 1]", "box pairs",
           "share of box pairs with a left/right/above/below relation (centres >= "
           "relation_min_sep apart on the dominant axis) that the detections keep with "
           "relation_margin; a pair with an undetected box fails (the user's rel_acc_all)",
           Ratio("rel_held", "rel_pairs", empty_reason=NO_PAIRS, per_pair=True), 0.02),
    _image("relation_rate_matched", True, "detector", "Relation rate (matched)",
           "share in [0, 1]", "detected box pairs",
           "relation_rate over the pairs whose two boxes are both detected (the user's "
           "rel_acc_matched)",
           Ratio("rel_held", "rel_pairs_matched", empty_reason=NO_MATCHED_PAIRS, per_pair=True),
           0.02),
    _image("clip_score", True, "clip", "CLIP score", "cosine similarity, 0-1 scale", "images",
           "cosine similarity of image and caption embeddings (torchmetrics' CLIPScore / 100)",
           Ratio("clip_score"), 0.005, headline=True),
    _image("region_clip_score", True, "clip", "Region CLIP", "cosine similarity, 0-1 scale",
           "boxes", "cosine similarity of each GT box crop and its phrase, mean over boxes",
           Ratio("region_clip_score", "n_boxes", weighted=True,
                 empty_reason="no ground-truth boxes", per_box=True), 0.02),
    _set("fid", False, "fid", "FID", "Frechet distance (features)", "images",
         "Frechet distance to the real-image reference statistics", headline=True),
    _set("kid", False, "fid", "KID", "unbiased MMD^2 (features)", "images",
         "kernel inception distance to the real-image reference features"),
    _image("garbled_rate", False, "none", "Garbled rate", "share in [0, 1]", "images",
           "share of images whose garbled score exceeds the protocol threshold",
           Ratio("garbled"), 0.02, headline=True),
    _image("blank_rate", False, "none", "Blank rate", "share in [0, 1]", "images",
           "share of near-black, near-white or near-uniform images",
           Ratio("blank"), 0.02, headline=True),
    # Where the adapter writes (adapters/write_meter.py): diagnostics, gated only when named.
    MetricSpec("effect_in_boxes", True, "image", "adapter", "Effect in boxes", "share in [0, 1]",
               "images", "share of the adapter's residual energy on tokens inside the union of "
               "the layout's boxes, pooled over sites and grounded steps",
               Ratio("effect_in_boxes", "write_located", reason="effect_in_boxes_reason",
                     empty_reason=_NO_WRITE), value_range=(0.0, 1.0)),
    MetricSpec("effect_lift", True, "image", "adapter", "Effect lift", "ratio (1 = uniform)",
               "images", "effect_in_boxes over a uniform writer's (the boxes' token share): "
               "> 1 concentrates in the boxes",
               Ratio("effect_lift", "write_located", reason="effect_lift_reason",
                     empty_reason=_NO_WRITE)),
    MetricSpec("box_attention_kappa", True, "image", "adapter", r"Box attention $\kappa$",
               "chance-corrected share in [-1, 1]", "images with >= 2 boxes",
               "per box, the share of its attention received from tokens inside it, "
               "chance-corrected by its token share, averaged over boxes",
               Ratio("box_attention_kappa", "kappa_measured", reason="box_attention_kappa_reason",
                     empty_reason=_NO_WRITE), value_range=(-1.0, 1.0)),
    MetricSpec("effect_norm", False, "image", "adapter", "Effect norm", "RMS ratio", "images",
               "RMS of the adapter's residual over RMS of the stream it is added to (the "
               "overwrite risk; 0: the adapter does nothing)",
               Ratio("effect_norm", "write_measured", reason="effect_norm_reason",
                     empty_reason=_NO_WRITE)),
)}

METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
IMAGE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.level == "image")
SET_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.level == "set")
LOWER_IS_BETTER: tuple[str, ...] = tuple(m.name for m in METRICS.values()
                                         if not m.higher_is_better)
DETECTOR_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values()
                                          if m.needs == "detector")
HEADLINE: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.headline)
DEFAULT_MARGINS: dict[str, float] = {m.name: m.default_margin for m in METRICS.values()
                                     if m.default_margin is not None}


def metric_names() -> tuple[str, ...]:
    """The table's names, read at call time (validation follows the table, even a patched one)."""
    return tuple(METRICS)


def get(name: str) -> MetricSpec | None:
    return METRICS.get(name)


def higher_is_better(name: str) -> bool:
    """Direction of ``name``; a name outside the table (an older run's) reads as higher."""
    spec = METRICS.get(name)
    return spec.higher_is_better if spec is not None else True


def is_set_level(name: str) -> bool:
    spec = METRICS.get(name)
    return spec is not None and spec.level == "set"


def join_names(names: tuple[str, ...] | list[str], last: str = " and ") -> str:
    """``a, b, c and d`` for prose that lists metrics."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + last + names[-1]


def _column(frame: pd.DataFrame, column: str) -> pd.Series:
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    return pd.to_numeric(frame[column], errors="coerce") if column in frame.columns else \
        pd.Series(np.nan, index=frame.index)


def units(frame: pd.DataFrame, ratio: Ratio) -> pd.DataFrame:
    """Per-image ``layout_id``, ``num``, ``den`` of the images that count (``where``).

    The one place the numerator/denominator rule is applied: score bootstraps these rows,
    compare sums them per layout, so the two cannot gate and report different numbers.
    Rows keep ``frame``'s order and index; ``num`` may be NaN where the column was not recorded.
    """
    import pandas as pd  # noqa: PLC0415

    num = _column(frame, ratio.numerator).astype(float)
    den = (_column(frame, ratio.denominator).astype(float) if ratio.denominator is not None
           else pd.Series(1.0, index=frame.index))
    if ratio.weighted:
        num = num * den
    num = num.mask(den == 0, 0.0)     # nothing to average (a mean over no boxes is NaN)
    out = pd.DataFrame({"layout_id": frame["layout_id"], "num": num, "den": den},
                       index=frame.index)
    if ratio.where is not None:
        out = out[(_column(frame, ratio.where) > 0).to_numpy()]
    return out


def aggregate_value(frame: pd.DataFrame, name: str) -> float | None:
    """The point value of per-image metric ``name`` over ``frame`` (None: nothing counts)."""
    ratio = METRICS[name].ratio
    if ratio is None:
        raise ValueError(f"expected a per-image metric, got set-level '{name}'")
    u = units(frame, ratio)
    u = u[u["num"].notna() & (u["den"] > 0)]
    return float(u["num"].sum() / u["den"].sum()) if len(u) else None
