"""GPU checks (run with `python -m pytest -m gpu` on a machine with CUDA; skipped without it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gatebench.protocol import load_protocol
from gatebench.run import RunOptions, run_evaluation
from tests.run_builders import tiny_world

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_run_fp16_on_cuda_matches_cpu_metrics_shape(tmp_path: Path) -> None:
    world = tiny_world(tmp_path / "w")
    protocol = load_protocol(world["protocol"]).replace(generation={"dtype": "fp16"})
    result = run_evaluation([world["ckpt"]], protocol, RunOptions(out_dir=tmp_path / "gpu",
                                                                 device="cuda"))
    doc = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert doc["device"].startswith("cuda") and doc["dtype"] == "float16"
    assert doc["generation"]["nonfinite"] == 0
    assert result.exit_code in (0, 1)


def test_trainer_step_on_cuda(tmp_path: Path) -> None:
    from gatebench.train.config import TrainConfig
    from gatebench.train.loop import Trainer

    world = tiny_world(tmp_path / "w")
    config = TrainConfig(mixed_data=world["layouts"], base_model=world["base"],
                         output_dir=tmp_path / "t", image_dir=world["root"] / "real",
                         max_steps=3, min_area=0.0, min_side=0.0, mixed_precision="fp16",
                         device="cuda")
    state = Trainer(config).run()
    assert state.step == 3
