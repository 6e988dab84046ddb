"""The metric table is the one source: score, compare, protocol and the report all follow it."""
from __future__ import annotations

from pathlib import Path

import pytest

from gatebench.errors import ProtocolError
from gatebench.metrics import spec as metric_spec
from gatebench.metrics.clip_score import TransformersClip
from gatebench.metrics.spec import METRICS, MetricSpec, Ratio
from gatebench.metrics.stats import bootstrap_ci
from gatebench.protocol import parse_protocol
from gatebench.rundir.records import metric_units
from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl
from gatebench.rundir.saved import label_map, load_run
from gatebench.score import score_folder
from gatebench.writes.records import NOT_RECORDED, write_sidecars
from tests.test_score import PROTOCOL, folder  # noqa: F401  (the fixture)

GOLDEN = Path(__file__).parent / "data" / "golden" / "run" / "results.json"
STABLE = ("iou50_rate", "miou", "ap50", "ap", "all_matched_rate", "relation_rate",
          "relation_rate_matched", "clip_score",
          "region_clip_score", "fid", "kid", "garbled_rate", "blank_rate")
WRITES = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")
TOY = MetricSpec("toy_rate", False, "image", "none", "Toy rate", "share in [0, 1]", "images",
                 "share of garbled images, counted again", Ratio("garbled"), 0.02)


def test_the_table_keeps_the_stable_names_and_facts() -> None:
    assert metric_spec.METRIC_NAMES == STABLE + WRITES
    assert all(METRICS[n].name == n for n in METRICS)
    assert metric_spec.IMAGE_METRICS == ("iou50_rate", "miou", "all_matched_rate", "relation_rate",
                                      "relation_rate_matched", "clip_score", "region_clip_score",
                                      "garbled_rate", "blank_rate", *WRITES)
    assert metric_spec.SET_METRICS == ("ap50", "ap", "fid", "kid")
    assert set(metric_spec.LOWER_IS_BETTER) == {"fid", "kid", "garbled_rate", "blank_rate", "effect_norm"}
    margins = {m: metric_spec.DEFAULT_MARGINS[m] for m in metric_spec.IMAGE_METRICS if m not in WRITES}
    assert margins == {"iou50_rate": 0.02, "miou": 0.02, "all_matched_rate": 0.02,
                       "relation_rate": 0.02, "relation_rate_matched": 0.02,
                       "clip_score": 0.005, "region_clip_score": 0.02, "garbled_rate": 0.02,
                       "blank_rate": 0.02}
    for m in METRICS.values():
        assert (m.ratio is not None) == (m.level == "image")         # set-level: no per-image sum
        # set-level metrics and the write diagnostics are gated only when named
        assert (m.default_margin is not None) == (m.level == "image" and m.needs != "adapter")
        assert m.needs == "none" or m.needs in metric_spec.NEED_REASONS
        assert m.definition and m.tex and m.n_of


def _score_and_reload(folder: dict[str, Path], tiny_clip):  # noqa: F811
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL, folder["detections"],
                          clip=TransformersClip(*tiny_clip))
    path = write_samples_jsonl(result.samples, folder["root"] / "samples.jsonl")
    return result, read_samples_jsonl(path)


def test_score_reports_what_the_spec_aggregates_from_saved_samples(
        folder: dict[str, Path], tiny_clip) -> None:  # noqa: F811
    """For every per-image metric, sum(num)/sum(den) of samples.jsonl via the spec (what compare
    pairs) is the number score reported: the two cannot drift."""
    # two images carry write diagnostics as generation records them; the third has none
    write_sidecars(folder["images"] / "猫_一.png",
                   {"effect_in_boxes": 0.7, "effect_lift": 1.8, "box_attention_kappa": 0.3,
                    "effect_norm": 0.05}, None)
    write_sidecars(folder["images"] / "狗_二.png",
                   {"effect_in_boxes": 0.4, "effect_lift": 1.1, "box_attention_kappa": None,
                    "box_attention_kappa_reason": "fewer than 2 boxes", "effect_norm": 0.09},
                   None)
    result, samples = _score_and_reload(folder, tiny_clip)
    per_image = [n for n in metric_spec.IMAGE_METRICS if n in result.metrics]
    assert per_image == list(metric_spec.IMAGE_METRICS)                 # all of them computed
    assert result.metrics["effect_lift"].value == pytest.approx((1.8 + 1.1) / 2)
    assert result.metrics["box_attention_kappa"].value == pytest.approx(0.3)
    garbled = samples.set_index("image").loc["garbled.png"]
    assert garbled["effect_norm_reason"] == NOT_RECORDED and garbled["write_measured"] == 0
    for name in per_image:
        reported = result.metrics[name]
        assert metric_spec.aggregate_value(samples, name) == pytest.approx(reported.value,
                                                                           rel=1e-12), name
        units = metric_units(samples, name)
        assert units["num"].sum() / units["den"].sum() == pytest.approx(reported.value,
                                                                        rel=1e-12), name
        # score's interval is the spec's units bootstrapped over layouts, nothing else
        u = metric_spec.units(result.samples, METRICS[name].ratio)
        den = u["den"] if METRICS[name].ratio.denominator else None
        s = PROTOCOL.scoring
        again = bootstrap_ci(u["num"], den, groups=list(u["layout_id"]), n_boot=s.bootstrap,
                             level=s.ci_level, seed=PROTOCOL.seed)
        assert again == reported, name


def test_golden_run_values_follow_the_spec() -> None:
    """Every (checkpoint, gate scale) of the golden run: its per-image metrics from its samples."""
    run = load_run(GOLDEN)
    checked, labels = 0, label_map(run.results)
    for row in run.results["results"]:
        group = run.samples[(run.samples["checkpoint"] == labels[str(row["checkpoint"])])
                            & (run.samples["gate_scale"] == row["gate_scale"])]
        for name in metric_spec.IMAGE_METRICS:
            if name in row["metrics"]:
                value = metric_spec.aggregate_value(group, name)
                assert value == pytest.approx(row["metrics"][name]["value"], abs=1e-4), name
                checked += 1
    assert checked >= 20


def test_a_new_table_entry_is_all_protocol_validation_and_score_need(
        folder: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    text = '[[targets]]\nmetric = "toy_rate"\nop = "<="\nthreshold = 0.1\n'
    with pytest.raises(ProtocolError, match="expected a metric in iou50_rate, .*toy_rate"):
        parse_protocol(text, Path("p.toml"))
    monkeypatch.setitem(METRICS, "toy_rate", TOY)
    protocol = parse_protocol(text, Path("p.toml"))
    assert [t.metric for t in protocol.targets] == ["toy_rate"]
    result = score_folder(folder["images"], folder["layouts"], PROTOCOL)   # its column exists
    assert result.metrics["toy_rate"] == result.metrics["garbled_rate"]


def test_the_report_defines_a_new_metric_from_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatebench.render.markdown import DEFINITIONS, definitions, n_unit

    assert definitions() == DEFINITIONS                     # every shipped metric has its prose
    monkeypatch.setitem(METRICS, "toy_rate", TOY)
    assert definitions().endswith("- **toy_rate** (lower is better): share of garbled images, "
                                  "counted again.\n")
    assert n_unit("toy_rate") == "images" and n_unit("miou") == "scorable boxes"
    assert TOY.tex_label == r"Toy rate $\downarrow$" and TOY.direction == "lower"
