"""A set-level metric is one table entry plus one ``@set_value`` function (issue 21 part 3)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from gatebench.metrics import aggregate as agg
from gatebench.metrics import spec
from gatebench.metrics.stats import MetricValue


def test_every_set_level_metric_names_a_registered_function() -> None:
    for m in spec.METRICS.values():
        if m.level == "set":
            assert m.set_value in agg.SET_VALUES, m.name
        else:
            assert m.set_value is None, m.name


def test_a_new_set_level_metric_is_an_entry_plus_a_function(monkeypatch) -> None:
    @agg.set_value("toy_count")
    def toy_count(inputs: agg.SetInputs) -> MetricValue | str:
        return MetricValue(float(len(inputs.ap_images)), None, None, len(inputs.ap_images))

    try:
        entry = dataclasses.replace(spec.METRICS["ap"], name="toy_count",
                                    set_value="toy_count")
        monkeypatch.setitem(spec.METRICS, "toy_count", entry)
        frame = pd.DataFrame({"layout_id": ["a", "b"], "n_scorable": [0, 0], "n_boxes": [1, 1],
                              "garbled": [False, True], "blank": [False, False]})
        have = {"detector": True, "clip": False, "fid": False, "none": True, "adapter": False}
        out, skip = agg.aggregate(frame, agg.SetInputs([], 0.0), have, n_boot=10, level=0.9,
                                  seed=0)
        assert out["toy_count"].value == 0.0
        assert skip["ap50"] == skip["ap"] == spec.NO_SCORABLE
        assert skip["fid"] == spec.NEED_REASONS["fid"]
        assert "iou50_rate" in skip and list(out) == ["garbled_rate", "blank_rate", "toy_count"]
    finally:
        agg.SET_VALUES.pop("toy_count", None)
    assert np.isfinite(out["toy_count"].value)
