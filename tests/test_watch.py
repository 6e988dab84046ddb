"""`gatebench watch` on the tiny pixel world: settled files only, each point once in series
order, TensorBoard points at the training step without duplicates, deletions and rewrites kept
apart, the CLI's exit codes. Checkpoints are written directly (cheap); the trainer-driven runs
(30 steps saving every 10, follow mode beside a training process) are marked slow."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gatebench.cli import cli
from gatebench.errors import GatebenchError
from gatebench.protocol import load_protocol, with_flags
from gatebench.readers.logs import read_train_log
from gatebench.rundir.saved import load_run
from gatebench.watch.discover import Settler
from gatebench.watch.evaluate import WatchOptions
from gatebench.watch.findings import control_finding, garbled_finding, loss_finding
from gatebench.watch.follow import watch
from gatebench.watch.state import Entry, load_state
from tests.model_builders import UNET_WIDTHS
from tests.run_builders import tiny_world, write_checkpoint, write_protocol
from tests.user_trainer_writer import FINAL_NAME, UserTrainerWriter

STEPS = (10, 20, 30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    w = tiny_world(tmp_path_factory.mktemp("watch-world"))
    w["protocol"] = write_protocol(w["root"], w["base"], w["layouts"], scales="[0.0, 1.0]")
    return w


def protocol(world):
    return with_flags(load_protocol(world["protocol"]), num_samples=2)


def user_run(folder: Path, steps=STEPS) -> Path:
    """The user's trainer's files: checkpoint-N.pt (bare state dicts) and a TensorBoard log."""
    for i, step in enumerate(steps):
        write_checkpoint(folder / f"checkpoint-{step}.pt", gate=0.1 * (i + 1))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tensorboard"))
    for step in range(5, 35, 5):
        writer.add_scalar("train/loss", 0.2, step)
        writer.add_scalar("train/gate_mean", 0.01 * step, step)
    writer.close()
    return folder


def options(out: Path, **kw) -> WatchOptions:
    return WatchOptions(out=out, once=True, settle_s=kw.pop("settle_s", 0.0),
                        unreadable_after_s=kw.pop("unreadable_after_s", 0.2), poll_s=0.05, **kw)


def scalar_steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def watched(world, tmp_path_factory):
    """One --once watch over checkpoint-10/20/30, and the events it said."""
    root = tmp_path_factory.mktemp("watched")
    run = user_run(root / "run")
    whole = (run / "checkpoint-30.pt").read_bytes()
    (run / "checkpoint-40.pt").write_bytes(whole[: len(whole) // 2])    # a torn save
    said: list[str] = []
    result = watch(run, protocol(world), options(root / "out"), on_event=said.append)
    return {"run": run, "out": root / "out", "result": result, "said": said, "root": root}


def test_once_evaluates_each_point_in_series_order(watched) -> None:
    result, said = watched["result"], watched["said"]
    doc = json.loads((watched["out"] / "watch.json").read_text())
    # bare files: the step is the file name's (issue 31), recorded nowhere inside
    assert [e["step"] for e in doc["checkpoints"]] == [*STEPS, 40]
    assert [e["step_source"] for e in doc["checkpoints"]] == ["file name"] * 4
    assert [e["recorded_step"] for e in doc["checkpoints"]] == [None] * 4
    assert [e["tb_step"] for e in doc["checkpoints"]] == [*STEPS, 40]
    assert [e["status"] for e in doc["checkpoints"]] == ["evaluated"] * 3 + ["unreadable"]
    # the torn file: reported once with the reason, never evaluated, never a crash
    assert [s for s in said if "checkpoint-40" in s] == [
        f"unreadable: checkpoint-40.pt ({doc['checkpoints'][3]['reason']}); the watch goes on"]
    order = [line.split()[1] for line in said if line.startswith("evaluating")]
    assert order == [f"checkpoint-{s}.pt" for s in STEPS]
    assert result.evaluated_now == 3
    # each point's results are a normal run folder that report and compare read
    runs = [load_run(watched["out"] / e["results"]) for e in doc["checkpoints"][:3]]
    assert all(r.results["n_layouts"] == 2 for r in runs)
    # one gate-0 image set for the whole watch: the later checkpoints make only scale 1
    made = [r.results["generation"]["generated"] for r in runs]
    assert made == [4, 2, 2]
    # each new point is compared with the best before it, by compare's rule (paired records)
    assert not (runs[0].folder / "compare_vs_best.json").exists()
    compared_doc = json.loads((runs[2].folder / "compare_vs_best.json").read_text())
    assert compared_doc["comparable"] is True and compared_doc["verdict"] in ("pass", "regression")
    # the verdict is the newest point's, by run's rule: iou50 is not computed here, so fail
    assert doc["verdict"] == runs[-1].results["verdict"] == "fail" and result.exit_code == 1
    compared = CliRunner().invoke(cli, ["compare", str(runs[0].path), str(runs[-1].path)])
    assert compared.exit_code in (0, 1), compared.output
    # no report.md per checkpoint (matplotlib's seconds): `report` renders it from the folder
    assert not (runs[0].folder / "report.md").exists() and (runs[0].folder / "grid.png").is_file()
    reported = CliRunner().invoke(cli, ["report", str(runs[0].path)])
    assert reported.exit_code == 0 and (runs[0].folder / "report.md").is_file(), reported.output


def test_trajectory_report(watched) -> None:
    """trajectory.md / .html: metrics against the step, grids, the logs' curves, the support
    items (the gate stats of the last 100 steps from the run's TensorBoard log)."""
    out = watched["out"]
    text = (out / "trajectory.md").read_text(encoding="utf-8")
    assert "| `checkpoint-10.pt` | 10 | evaluated |" in text
    assert text.count("](grid_checkpoint-") == 3 and (out / "trajectory.png").is_file()
    assert "### Gate stats of the last 100 steps (tensorboard)" in text
    html = (out / "trajectory.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") == 4 and "<script" not in html


def test_tensorboard_points_at_the_training_step_and_no_duplicates(watched, world) -> None:
    board = watched["run"] / "tensorboard" / "gatebench"     # the run's own folder by default
    assert watched["result"].tensorboard == board
    assert scalar_steps(board, "eval/garbled_rate/scale_1") == list(STEPS)
    assert scalar_steps(board, "eval/garbled_rate/scale_1/ci_high") == list(STEPS)
    said: list[str] = []
    again = watch(watched["run"], protocol(world), options(watched["out"]), on_event=said.append)
    assert again.evaluated_now == 0 and not any(s.startswith("evaluating") for s in said)
    assert not any("unreadable" in s for s in said)             # reported once, not per run
    assert scalar_steps(board, "eval/garbled_rate/scale_1") == list(STEPS)
    # training's own folder keeps its own points only
    assert scalar_steps(watched["run"] / "tensorboard", "train/loss") == list(range(5, 35, 5))


def test_a_folder_written_like_the_users_trainer(world, tmp_path) -> None:
    """Issue 31: fp16 files saved in place in chunks, checkpoint-N.pt then the final file
    (the last checkpoint's tensors), no step inside: each step evaluated once at step N in
    TensorBoard, the final file at the last point; a rerun into the same folder that overwrites
    the names with new content is evaluated again, its first results kept apart."""
    run = tmp_path / "run"
    writer = UserTrainerWriter(run, widths=UNET_WIDTHS, text_dim=32, save_every=10)
    writer.run(30)
    out, board = tmp_path / "out", tmp_path / "board"
    first = watch(run, protocol(world), options(out, tensorboard=board))
    doc = json.loads((out / "watch.json").read_text())
    by_name = {e["name"]: e for e in doc["checkpoints"]}
    assert [by_name[f"checkpoint-{s}.pt"]["step"] for s in STEPS] == list(STEPS)
    final = by_name[FINAL_NAME]
    assert final["status"] == "same_point" and final["same_as"].endswith("checkpoint-30.pt")
    assert final["step"] == 30 and final["step_source"] == "identical file"
    assert first.evaluated_now == 3
    assert scalar_steps(board / "gatebench", "eval/garbled_rate/scale_1") == list(STEPS)
    UserTrainerWriter(run, widths=UNET_WIDTHS, text_dim=32, save_every=10, seed=1).run(30)
    again = watch(run, protocol(world), options(out, tensorboard=board))
    doc = json.loads((out / "watch.json").read_text())
    assert again.evaluated_now == 3 and len(doc["replaced"]) == 3
    assert all((out / e["results"]).is_file() for e in doc["replaced"])
    assert scalar_steps(board / "gatebench", "eval/garbled_rate/scale_1") == list(STEPS)


def test_a_file_written_in_two_halves_with_a_pause_waits_then_loads(watched, tmp_path) -> None:
    """The settle rule with a clock of our own: a pause longer than the settle interval makes
    the torn half fail to load; it is retried (never reported) until the rest arrives."""
    now = [1000.0]
    settler = Settler(1.0, 30.0, clock=lambda: now[0], wall=lambda: 2e9)
    whole = (watched["run"] / "checkpoint-10.pt").read_bytes()
    path = tmp_path / "checkpoint-40.pt"
    path.write_bytes(whole[:100])
    os.utime(path, ns=(int(2e18), int(2e18)))
    assert settler.observe([path])[0].state == "waiting"          # not settled yet
    now[0] += 2.0
    first = settler.observe([path])[0]
    assert first.state == "waiting" and "does not load yet" in (first.reason or "")
    now[0] += 10.0
    assert settler.observe([path])[0].state == "waiting"          # < unreadable delay
    path.write_bytes(whole)
    os.utime(path, ns=(int(2e18) + 5, int(2e18) + 5))
    assert settler.observe([path])[0].state == "waiting"          # changed: settles again
    now[0] += 2.0
    done = settler.observe([path])[0]
    assert done.state == "ready" and done.info is not None and done.info.sha256


def test_torchrun_is_refused_and_a_bad_watch_json_is_one_error(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_checkpoint(run / "checkpoint-10.pt")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(GatebenchError, match="torchrun"):
        watch(run, protocol(world), options(tmp_path / "out"))
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "watch.json").write_text(json.dumps(
        {"schema_version": 1, "run_dir": str(run.resolve()), "checkpoints": "x"}))
    with pytest.raises(GatebenchError, match="watch.json field"):
        load_state(tmp_path / "out", run.resolve(), {})
    result = CliRunner().invoke(cli, ["watch", str(tmp_path / "nothing"), "--once",
                                      "--protocol", str(world["protocol"])])
    assert result.exit_code == 2 and "not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["watch", str(tmp_path / "empty"), "--once",
                                      "--protocol", str(world["protocol"])])
    assert result.exit_code == 2 and "found none" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_cli_once_names_the_best_and_the_held_out_command(world, tmp_path) -> None:
    run = user_run(tmp_path / "run", steps=(10,))
    result = CliRunner().invoke(cli, ["watch", str(run), "--once", "--protocol",
                                      str(world["protocol"]), "--num-samples", "2", "--settle",
                                      "0", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "best on the probe set: " in result.output and "gatebench run --ckpt" in result.output
    assert "winner's curse" in result.output
    # follow mode with a stop condition: no file changed for --idle-timeout (a dead trainer)
    said: list[str] = []
    followed = watch(run, protocol(world), WatchOptions(
        out=tmp_path / "out", settle_s=0.0, poll_s=0.05, idle_timeout_s=0.3),
        on_event=said.append)
    assert followed.evaluated_now == 0 and followed.exit_code == 1
    assert said[-1].startswith("no checkpoint changed for") and not followed.state.complete


def _log(path: Path, losses) -> Path:
    lines = []
    for i, loss in enumerate(losses, start=1):
        lines.append(f"Step {i * 10}: Gate stats - mean: {0.001 * i:.6g}, std: 0.0005, "
                     f"min: 0.0, max: 0.01")
        lines.append(f"Step {i * 10}: loss: {loss:.6g}, lr: 0.0001")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loss_not_falling_on_a_flat_curve_not_on_the_expected_fall(tmp_path) -> None:
    """The user's expected curve, 0.15 -> 0.10 under sd 0.03 noise (~20 % of the loss), over
    100 logged steps; the same noise around a flat 0.125 is flagged. Seeded: the decision on
    these exact curves is fixed (trend.py states the rates over many seeds)."""
    gen = torch.Generator().manual_seed(3)
    noise = (torch.randn(100, generator=gen) * 0.03).tolist()
    falling = [0.15 - 0.05 * i / 99 + n for i, n in enumerate(noise)]
    flat = [0.125 + n for n in noise]
    assert loss_finding([read_train_log(_log(tmp_path / "a.log", falling))]) == []
    [found] = loss_finding([read_train_log(_log(tmp_path / "b.log", flat))])
    assert found.code == "loss_not_falling" and "5e-4" in found.message
    assert "Mann-Kendall" in found.message
    # too few points: no decision either way
    assert loss_finding([read_train_log(_log(tmp_path / "c.log", flat[:20]))]) == []


def _entry(step: int, gate: float, lift: float, garbled1: float = 0.0) -> Entry:
    return Entry(f"/r/checkpoint-{step}.pt", status="evaluated", tb_step=step, gate_mean=gate,
                 results="x", headline={"0": {"garbled_rate": {"value": 0.0}},
                                        "1": {"effect_lift": {"value": lift},
                                              "garbled_rate": {"value": garbled1}}})


def test_gate_series_finding_over_the_evaluated_checkpoints(tmp_path) -> None:
    from gatebench.checkpoint import inspect_checkpoint
    from gatebench.protocol import GateThresholds
    from gatebench.watch.findings import gate_series_findings
    from tests.builders import write_series

    infos = [inspect_checkpoint(p) for p in write_series(tmp_path, [3.0, 2.0, 1.0, 0.29],
                                                         name="checkpoint-{}000.pt")]
    codes = {f.code for f in gate_series_findings(infos, GateThresholds())}
    assert "collapse" in codes
    assert gate_series_findings(infos[:1], GateThresholds()) == []


def test_control_and_garbled_findings() -> None:
    flat = [_entry(10, 0.1, 1.5), _entry(20, 0.3, 1.4), _entry(30, 0.6, 1.45)]
    [found] = control_finding(flat, "1")
    assert found.code == "control_not_growing" and "effect_lift" in found.message
    growing = [_entry(10, 0.1, 1.2), _entry(20, 0.3, 1.6), _entry(30, 0.6, 2.0)]
    assert control_finding(growing, "1") == []
    assert control_finding(flat[:2], "1") == []                 # too few points
    [garbled] = garbled_finding(_entry(30, 0.6, 2.0, garbled1=0.5))
    assert "check-init --ckpt /r/checkpoint-30.pt" in garbled.message
    assert garbled_finding(_entry(30, 0.6, 2.0)) == []


def test_deleted_and_rewritten_checkpoints(world, watched, tmp_path) -> None:
    """Runs last on the module's watch (it changes the run folder)."""
    run, out = watched["run"], watched["out"]
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # a watch.json of another run folder is refused, not mixed in
    other = write_checkpoint(tmp_path / "other" / "checkpoint-1.pt").parent
    with pytest.raises(GatebenchError, match="expected a watch of"):
        watch(other, protocol(world), options(copy))
    (run / "checkpoint-10.pt").unlink()
    write_checkpoint(run / "checkpoint-20.pt", gate=0.9)      # a restarted run, other content
    said: list[str] = []
    watch(run, protocol(world), options(out), on_event=said.append)
    doc = json.loads((out / "watch.json").read_text())
    by_name = {e["name"]: e for e in doc["checkpoints"]}
    assert by_name["checkpoint-10.pt"]["status"] == "deleted"
    assert (out / by_name["checkpoint-10.pt"]["results"]).is_file()     # its results stay
    assert sum(s.startswith("deleted: checkpoint-10.pt") for s in said) == 1
    assert by_name["checkpoint-20.pt"]["status"] == "evaluated"
    [old] = doc["replaced"]
    assert old["name"] == "checkpoint-20.pt" and old["run"] != by_name["checkpoint-20.pt"]["run"]
    assert (out / old["results"]).is_file()
    assert [s.split()[1] for s in said if s.startswith("evaluating")] == ["checkpoint-20.pt"]
    said.clear()
    watch(run, protocol(world), options(out), on_event=said.append)
    assert not any(s.startswith(("deleted", "rewritten", "evaluating")) for s in said)


@pytest.mark.slow
def test_trainer_run_watched_once_then_followed_as_it_resumes(world, tmp_path) -> None:
    """gatebench's trainer, 30 steps saving every 10: --once evaluates 10, 20, 30 (final.pt
    and spatial_adapter_final.pt join step 30's point); then follow mode picks up the
    checkpoints of a resumed run (to 50) as they land and SIGINT ends it (130), resumable."""
    from gatebench.train.config import TrainConfig
    from gatebench.train.loop import Trainer

    run = tmp_path / "run"
    config = TrainConfig(mixed_data=world["layouts"], base_model=world["base"], output_dir=run,
                         image_dir=world["root"] / "real", batch_size=2, epochs=100,
                         max_steps=30, lr=1e-3, warmup_steps=1, log_every=5,
                         log_gate_stats=True, log_tensorboard=True, min_area=0.0,
                         min_side=0.0, caption_dropout=0.0, save_every=10)
    Trainer(config).run()
    status = json.loads((run / "training_status.json").read_text())
    assert status == {"state": "complete", "atomic_writes": True, "step": 30,
                      "final": "final.pt"}
    # a final.pt left by an earlier run is no end while the status says running
    from gatebench.watch.discover import read_trainer_status
    assert read_trainer_status(run).present and read_trainer_status(run).complete
    out = tmp_path / "out"
    result = watch(run, protocol(world), options(out, settle_s=30.0))   # atomic: no settling
    doc = json.loads((out / "watch.json").read_text())
    assert [e["tb_step"] for e in doc["checkpoints"] if e["status"] == "evaluated"] == [10, 20,
                                                                                         30]
    assert {e["name"]: e["status"] for e in doc["checkpoints"]}["final.pt"] == "same_point"
    board = run / "tensorboard" / "gatebench"
    assert scalar_steps(board, "eval/garbled_rate/scale_1") == [10, 20, 30]
    assert result.exit_code == 1
    # follow mode beside a resumed training: it follows until the trainer says complete
    import dataclasses
    import threading

    resumed = threading.Thread(target=Trainer(dataclasses.replace(
        config, max_steps=50, resume=run / "final.pt")).run)
    resumed.start()
    deadline = time.monotonic() + 60
    while json.loads((run / "training_status.json").read_text())["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    follower = _gatebench("watch", str(run), "--protocol", str(world["protocol"]),
                          "--num-samples", "2", "--out", str(out), "--poll", "0.2")
    resumed.join()
    output, _ = follower.communicate(timeout=300)
    assert follower.returncode == 1, output          # ended by itself: the verdict's code
    doc = json.loads((out / "watch.json").read_text())
    assert [e["tb_step"] for e in doc["checkpoints"] if e["status"] == "evaluated"] == [
        10, 20, 30, 40, 50] and doc["complete"] is True
    assert scalar_steps(board, "eval/garbled_rate/scale_1") == [10, 20, 30, 40, 50]


def _gatebench(*args: str) -> subprocess.Popen:
    env = {**os.environ, "GATEBENCH_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gatebench", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_follow_mode_ends_on_sigint_and_resumes(world, tmp_path) -> None:
    """The user's trainer has written no final file yet: follow mode polls until SIGINT,
    exits 130 with watch.json whole; the same command resumes and evaluates nothing again."""
    run = user_run(tmp_path / "run", steps=(10,))
    out = tmp_path / "out"
    args = ("watch", str(run), "--protocol", str(world["protocol"]), "--num-samples", "2",
            "--out", str(out), "--poll", "0.2", "--settle", "0.2")
    follower = _gatebench(*args)
    deadline = time.monotonic() + 240
    while not (out / "watch.json").is_file() or json.loads(
            (out / "watch.json").read_text())["checkpoints"][0]["status"] != "evaluated":
        assert time.monotonic() < deadline and follower.poll() is None
        time.sleep(0.2)
    write_checkpoint(run / "checkpoint-20.pt", gate=0.4)       # lands while it follows
    while [e["status"] for e in json.loads((out / "watch.json").read_text())["checkpoints"]] \
            != ["evaluated", "evaluated"]:
        assert time.monotonic() < deadline and follower.poll() is None
        time.sleep(0.2)
    follower.send_signal(signal.SIGINT)
    output, _ = follower.communicate(timeout=60)
    assert follower.returncode == 130 and "run the same command again" in output, output
    again = _gatebench(*args, "--once")
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 1 and "0 evaluated now" in output, output


def test_watch_bench_smoke(tmp_path) -> None:
    """bench/watch_bench.py end to end at its smallest (the shapes world, 2 checkpoints)."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" /
                                               "watch_bench.py"),
                           "--checkpoints", "2", "--num-samples", "2", "--steps", "2",
                           "--idle-seconds", "0", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["checkpoints"] == 2 and doc["images_generated"] == [4, 2]   # gate 0 made once
    assert all(r["seconds"] > 0 and r["generate_s"] > 0 for r in doc["rows"])
