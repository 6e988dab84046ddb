"""not_localised and overwrites_stream: raised exactly when their evidence holds."""
from __future__ import annotations

from gatebench.writes.findings import write_findings


def _m(value, low=None, high=None, n=10):
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def _rows(lift, garbled_at_2, norm=0.1):
    rows = [{"checkpoint": "a.pt", "gate_scale": 0.0,
             "metrics": {"garbled_rate": _m(0.05, 0.0, 0.1)}}]
    for scale, garbled in ((1.0, _m(0.06, 0.0, 0.12)), (2.0, garbled_at_2)):
        rows.append({"checkpoint": "a.pt", "gate_scale": scale,
                     "metrics": {"garbled_rate": garbled, "effect_norm": _m(norm * scale),
                                 "effect_lift": lift, "box_attention_kappa": _m(0.01, -0.1, 0.1)}})
    return rows


CHECKPOINT = {"path": "a.pt", "family": "user", "scale_range": [0.0, 1.0],
              "adapter_config": {"null_slot": False, "box_mask": False}}


def test_a_uniform_writer_that_garbles_above_its_range_gets_both_findings() -> None:
    found = write_findings(_rows(_m(1.02, 0.95, 1.1), _m(0.5, 0.3, 0.7)), [CHECKPOINT],
                           {"a.pt": "a"})
    codes = [(f.code, f.severity, f.subject) for f in found]
    assert codes == [("not_localised", "warn", "a")] * 2 + [("overwrites_stream", "warn", "a")]
    assert "at gate scale 1 " in found[0].message and "at gate scale 2 " in found[1].message
    assert "plain box attention" in found[0].message
    assert "gate scale 2 lies above the trained range [0, 1]" in found[2].message
    assert "0.2" in found[2].message                       # effect_norm at scale 2 is named


def test_a_localised_clean_adapter_and_a_deadlock_get_none() -> None:
    assert write_findings(_rows(_m(2.5, 1.8, 3.1), _m(0.08, 0.0, 0.15)), [CHECKPOINT],
                          {"a.pt": "a"}) == []
    dead = _rows(None, _m(0.05, 0.0, 0.1), norm=0.0)
    for row in dead[1:]:
        del row["metrics"]["effect_lift"]                  # not computed: effect exactly 0
    assert write_findings(dead, [CHECKPOINT], {"a.pt": "a"}) == []


def test_a_broken_write_record_reads_as_not_recorded_never_a_default(tmp_path) -> None:
    """Zero bytes, truncated JSON, deep nesting, a string where a number goes, non-UTF-8:
    the diagnostics are 'not computed' with a reason, never 0 and never a traceback."""
    import math

    from gatebench.writes.records import (
        NOT_RECORDED,
        read_map,
        read_record,
        sample_columns,
        sidecar,
    )

    image = tmp_path / "a__s1.png"
    for content in (b"", b'{"effect_norm": 0.', b"[" * 100000 + b"]" * 100000,
                    b'{"effect_norm": "big"}', b"\xff\xfe\x00garbage"):
        sidecar(image).write_bytes(content)
        record = read_record(image)
        assert record is None and read_map(image) is None
        columns = sample_columns(record, 1.0)
        assert math.isnan(columns["effect_norm"]) and columns["write_measured"] == 0
        assert columns["effect_norm_reason"] == NOT_RECORDED
