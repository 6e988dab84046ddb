"""The embedded trainer on the tiny pixel world: inits, logs the harness reads, exact resume."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gatebench.checkpoint import inspect_checkpoint, read_raw
from gatebench.cli import cli
from gatebench.gates import analyse
from gatebench.protocol import GateThresholds
from gatebench.readers.logs import read_logs
from gatebench.train.config import TrainConfig
from gatebench.train.loop import Trainer
from tests.builders import free_port
from tests.run_builders import tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_world(tmp_path_factory.mktemp("train-world"))


def config(world, out: Path, **overrides) -> TrainConfig:
    base = TrainConfig(mixed_data=world["layouts"], base_model=world["base"], output_dir=out,
                       image_dir=world["root"] / "real", batch_size=2, epochs=50, max_steps=20,
                       lr=1e-3, warmup_steps=1, log_every=5, log_gate_stats=True,
                       log_tensorboard=True, min_area=0.0, min_side=0.0, caption_dropout=0.0)
    return dataclasses.replace(base, **overrides)


def train(world, out: Path, **overrides) -> Trainer:
    trainer = Trainer(config(world, out, **overrides))
    trainer.run()
    return trainer


def test_gligen_init_opens_the_gates_and_logs_what_gates_reads(world, tmp_path: Path) -> None:
    trainer = train(world, tmp_path)
    gates = [float(g) for g in trainer.adapters.gates().values()]
    assert all(g != 0.0 for g in gates)
    info = inspect_checkpoint(tmp_path / "final.pt")
    assert info.format == "gatebench" and info.training.step == 20
    assert info.training.init_scheme == "gligen" and len(info.training.gate_history) == 4
    kinds = {s.kind for s in read_logs(tmp_path)}
    assert kinds == {"train.log", "jsonl", "tensorboard"}
    result = CliRunner().invoke(cli, ["gates", "--log", str(tmp_path / "train.log"), "--log",
                                      str(tmp_path / "tensorboard"), "--json"])
    doc = json.loads(result.output)
    assert [log["points"] for log in doc["logs"]] == [4, 4]
    assert [len(log["writes"]) for log in doc["logs"]] == [0, 4]   # train.log has no such lines
    assert set(doc["logs"][1]["writes"][0]) >= {"step", "effect_in_boxes", "effect_norm"}
    shown = CliRunner().invoke(cli, ["gates", "--log", str(tmp_path / "train_log.jsonl")])
    assert "where the adapter writes" in shown.output and "effect_lift" in shown.output
    # where the adapter writes, from the training forward's own hooks, every log step
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(0 <= r["effect_in_boxes"] <= 1 and r["effect_norm"] > 0
                                  and r["effect_lift"] > 0 for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/effect_in_boxes", "train/effect_lift", "train/effect_norm"} <= tags
    assert [e.step for e in events.Scalars("train/effect_norm")] == [5, 10, 15, 20]


def test_deadlock_init_never_moves_and_is_flagged(world, tmp_path: Path) -> None:
    trainer = train(world, tmp_path, init="deadlock", max_steps=10)
    for adapter in trainer.adapters.values():
        assert float(adapter.gated_attn.gate) == 0.0
        assert not adapter.gated_attn.to_out.weight.any()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(r["effect_norm"] == 0.0 and "effect_in_boxes" not in r for r in rows)
    report = analyse([inspect_checkpoint(tmp_path / "final.pt")], [], GateThresholds())
    assert "deadlock" in {f.code for f in report.findings}
    assert CliRunner().invoke(cli, ["gates", str(tmp_path / "final.pt")]).exit_code == 1


def test_legacy_init_collapses_and_is_flagged_from_the_log(world, tmp_path: Path) -> None:
    """A random tiny base has nothing the adapter's noise could spoil, so here weight decay drives
    the legacy gate down (measured: 3.0 -> 0.96 in 40 steps); the point is that the harness reads
    the produced train.log and flags the fall. The shapes world shows the real dynamic."""
    train(world, tmp_path, init="legacy", lr=0.03, weight_decay=1.0, max_steps=40, log_every=4)
    series = read_logs(tmp_path / "train.log")
    gate = list(series[0].gate_points["gate_mean"])
    assert gate[0] > 2.5 and gate[-1] < 1.5
    codes = {f.code for f in analyse([], series, GateThresholds()).findings}
    assert "collapse" in codes
    result = CliRunner().invoke(cli, ["gates", "--log", str(tmp_path / "train.log")])
    assert result.exit_code == 1 and "collapse" in result.output


def test_ten_plus_resume_plus_ten_equals_twenty(world, tmp_path: Path) -> None:
    straight = train(world, tmp_path / "a", max_steps=20)
    first = train(world, tmp_path / "b", max_steps=10)
    del first
    resumed = train(world, tmp_path / "c", max_steps=20, resume=tmp_path / "b" / "final.pt")
    assert resumed.state.step == 20
    for key, value in straight.adapters.state_dict().items():
        assert torch.equal(value, resumed.adapters.state_dict()[key]), key
    a, _ = read_raw(tmp_path / "a" / "final.pt")
    c, _ = read_raw(tmp_path / "c" / "final.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_from_the_run_folder_continues_the_run(world, tmp_path: Path) -> None:
    """`--resume RUN_DIR` continues from the run's newest checkpoint with resume state (the
    series rule: final.pt), not from spatial_adapter_final.pt, the weights-only file written last;
    naming that file is one line that names final.pt."""
    run = tmp_path / "run"
    train(world, run, max_steps=4, save_every=2)
    assert (run / "spatial_adapter_final.pt").stat().st_mtime_ns >= \
        (run / "final.pt").stat().st_mtime_ns
    straight = train(world, tmp_path / "straight", max_steps=6)
    args = ["train", "--mixed-data", str(world["layouts"]), "--base-model", str(world["base"]),
            "--image-dir", str(world["root"] / "real"), "--batch-size", "2", "--epochs", "50",
            "--max-steps", "6", "--lr", "1e-3", "--warmup-steps", "1", "--min-area", "0",
            "--min-side", "0", "--caption-dropout", "0", "--output-dir", str(tmp_path / "more")]
    result = CliRunner().invoke(cli, [*args, "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"resuming from {run / 'final.pt'} (step 4)" in result.output
    more, _ = read_raw(tmp_path / "more" / "final.pt")
    assert all(torch.equal(value, more[key]) for key, value in
               straight.adapters.state_dict().items())          # 4 + resume + 2 = 6 exactly
    bare = CliRunner().invoke(cli, [*args, "--resume", str(run / "spatial_adapter_final.pt")])
    assert bare.exit_code == 2
    assert len(bare.output.strip().splitlines()) == 1 and "weights-only" in bare.output
    assert f"resume from {run / 'final.pt'}, which has it" in bare.output


def test_trained_checkpoint_runs_through_gatebench_run(world, tmp_path: Path) -> None:
    train(world, tmp_path / "t", max_steps=5, scale_min=0.5, scale_max=1.0, null_slot=True,
          box_mask=True)
    saved = inspect_checkpoint(tmp_path / "t" / "final.pt").adapter_config
    assert saved["box_mask"] is True and saved["null_slot"] is True   # run rebuilds the same adapter
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--ckpt", str(tmp_path / "t" / "final.pt"),
                                      "--protocol", str(world["protocol"]), "--num-samples", "2",
                                      "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["checkpoints"][0]["init_scheme"] == "gligen"
    assert doc["checkpoints"][0]["adapter_config"]["box_mask"] is True
    report = (out / "report.md").read_text()
    assert "follows user adapter module (formats.md), variants: null_slot, box_mask" in report
    assert ("adapter fourier user, query attn2_output, text_proj user, phrases kolors-only, "
            "null_slot True, box_mask True; CFG unconditional half: grounded") in report
    assert any(f["code"] == "extrapolated_scale" for f in doc["gate_findings"])


def test_user_warnings_for_gate_init_and_freeze(world, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "train", "--mixed-data", str(world["layouts"]), "--base-model", str(world["base"]),
        "--output-dir", str(tmp_path), "--image-dir", str(world["root"] / "real"),
        "--max-steps", "2", "--min-area", "0", "--min-side", "0", "--gate-init-value", "0.5",
        "--freeze-gate", "--log-every", "1"])
    assert result.exit_code == 0, result.output
    assert "do not set --gate-init-value" in result.output and "--freeze-gate" in result.output
    info = inspect_checkpoint(tmp_path / "final.pt")
    assert all(g.raw == pytest.approx(0.5) for g in info.gates)


def test_two_process_gloo_run(world, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "gatebench", "train",
           "--mixed-data", str(world["layouts"]),
           "--base-model", str(world["base"]), "--output-dir", str(tmp_path),
           "--image-dir", str(world["root"] / "real"), "--max-steps", "3", "--min-area", "0",
           "--min-side", "0", "--log-every", "1", "--log-gate-stats", "--batch-size", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    info = inspect_checkpoint(tmp_path / "final.pt")
    assert info.training.step == 3
    lines = (tmp_path / "train.log").read_text().count("Gate stats")
    assert lines == 3                     # rank 0 only writes


def test_default_training_is_the_users_forward_and_writes_the_users_file(world, tmp_path: Path) -> None:
    """`gatebench train` trains the user's forward; spatial_adapter_final.pt is the bare state
    dict the user's code loads, and gatebench reads it as the same adapter as final.pt."""
    from tests.reference_user import FORMATS_KEYS

    train(world, tmp_path, max_steps=4)
    ours, bare = inspect_checkpoint(tmp_path / "final.pt"), inspect_checkpoint(
        tmp_path / "spatial_adapter_final.pt")
    assert bare.format == "user" and ours.format == "gatebench"
    assert ours.adapter_config == bare.adapter_config
    assert ours.adapter_config["reference"] == "user adapter module (formats.md)"
    state = torch.load(tmp_path / "spatial_adapter_final.pt", weights_only=True)
    widths = ours.adapter_config["widths"]
    assert set(state) == {f"dim_{w}.{k}" for w in widths for k in FORMATS_KEYS}
    final, _ = read_raw(tmp_path / "final.pt")
    assert all(torch.equal(state[k], final[k]) for k in state)
    # a variant's weights would mean something else in the user's code: no bare file then
    train(world, tmp_path / "variant", max_steps=2, box_mask=True)
    assert not (tmp_path / "variant" / "spatial_adapter_final.pt").exists()


def test_one_gate_scale_per_step_and_caption_dropped_samples_keep_their_boxes(world, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """The user's trainer: one s ~ U[min, max] per step for the whole batch; a caption-dropped
    sample keeps its boxes (grounded), unless --uncond-boxes off (then its scale is 0)."""
    from gatebench.train.loop import GroundedUNet

    seen: list[torch.Tensor] = []
    forward = GroundedUNet.forward

    def spy(self, sample, timestep, hidden, grounding, unet_kwargs, meter=None):
        seen.append(grounding.scale.detach().cpu().clone())
        return forward(self, sample, timestep, hidden, grounding, unet_kwargs, meter)

    monkeypatch.setattr(GroundedUNet, "forward", spy)
    train(world, tmp_path / "a", max_steps=3, batch_size=3, scale_min=0.5, scale_max=1.0,
          caption_dropout=0.5)
    assert all(bool((s == s[0]).all()) and 0.5 <= float(s[0]) <= 1.0 for s in seen)
    seen.clear()
    train(world, tmp_path / "b", max_steps=3, batch_size=3, scale_min=0.5, scale_max=1.0,
          scale_sampling="per-sample", caption_dropout=0.9, uncond_boxes="off")
    assert any(float(v) == 0.0 for s in seen for v in s)       # dropped captions: adapter off
    assert inspect_checkpoint(tmp_path / "b" / "final.pt").reference_uncond == "off"
    assert inspect_checkpoint(tmp_path / "a" / "final.pt").reference_uncond == "grounded"
