"""SIGTERM, a second run into the same folder and a read-only --out (issue 22, parts 3 and 7).

Real processes (`python -m gatebench run`) on the tiny world of tests/test_run.py: SIGTERM mid
generation exits 143 with the resume hint and the rerun gives the clean run's metrics; a run into
a folder another run holds exits 2 in one line; a folder that refuses writes is one line, exit 2,
before any model loads.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gatebench.cli import cli
from gatebench.errors import GatebenchError
from gatebench.rundir import outputs
from gatebench.rundir.outputs import LOCK_NAME, ensure_out_dir, run_lock
from tests.run_builders import tiny_world, write_protocol

WRITES = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    found = tiny_world(tmp_path_factory.mktemp("world"))
    # enough sampler steps that generation takes seconds: SIGTERM lands mid-generation
    slow = tmp_path_factory.mktemp("slow")
    found["slow"] = write_protocol(slow, found["base"], found["layouts"], steps=30)
    return found


def _args(world: dict[str, Path], out: Path, protocol: str = "protocol") -> list[str]:
    return [sys.executable, "-m", "gatebench", "run", "--ckpt", str(world["ckpt"]), "--protocol",
            str(world[protocol]), "--device", "cpu", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _metrics(out: Path) -> list[dict]:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    return [{"checkpoint": r.get("checkpoint"), "gate_scale": r["gate_scale"],
             **{k: v for k, v in r["metrics"].items() if k not in WRITES}} for r in results]


def test_sigterm_mid_run_exits_143_with_the_hint_and_the_rerun_matches_a_clean_run(
        world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_args(world, out, "slow"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "images").rglob("*.png")):
            assert proc.poll() is None, f"the run ended before SIGTERM: {proc.communicate()}"
            assert time.monotonic() < deadline, "no image generated within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    assert "terminated (SIGTERM); run the same command again to resume" in stderr
    assert not (out / "results.json").exists()
    # the OS released the lock with the process: the same command resumes and finishes
    rerun = subprocess.run(_args(world, out, "slow"), env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-3000:]   # the tiny world fails a target
    resumed = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert resumed["generation"]["cached"] >= 1
    clean = tmp_path / "clean"
    done = subprocess.run(_args(world, clean, "slow"), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert _metrics(out) == _metrics(clean)


def test_a_second_run_into_a_held_folder_exits_2_in_one_line(world, tmp_path: Path) -> None:
    out = tmp_path / "held"
    ensure_out_dir(out)
    began = time.monotonic()
    with run_lock(out):        # the first run, as far as the second one can tell
        second = subprocess.run(_args(world, out), env=_env(), capture_output=True, text=True,
                                timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    lines = _lines(second.stderr)
    assert len(lines) == 1, lines
    assert "another gatebench run" in lines[0] and f"(pid {os.getpid()})" in lines[0]
    assert str(out) in lines[0] and "choose another --out" in lines[0]
    assert not (out / "images").exists() and not (out / "results.json").exists()
    assert time.monotonic() - began < 60
    # released: the same folder takes a run again (in-process here: the lock is per open file)
    with run_lock(out) as path:
        assert path == out / LOCK_NAME
        assert path.read_text(encoding="utf-8").strip() == str(os.getpid())


def test_the_lock_is_released_on_an_error(tmp_path: Path) -> None:
    out = ensure_out_dir(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with run_lock(out):
            raise RuntimeError("boom")
    with run_lock(out):
        with pytest.raises(GatebenchError, match="another gatebench run"):
            with run_lock(out):
                pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores read-only permission bits (chmod has "
                    "no effect); test_a_folder_refusing_writes_is_one_line_before_any_model "
                    "injects the same error")
def test_read_only_out_exits_2_in_one_line_within_seconds(world, tmp_path: Path) -> None:
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert not os.access(out, os.W_OK)
        began = time.monotonic()
        done = subprocess.run(_args(world, out), env=_env(), capture_output=True, text=True,
                              timeout=120)
        took = time.monotonic() - began
    finally:
        out.chmod(0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = _lines(done.stderr)
    assert len(lines) == 1 and "expected a writable folder" in lines[0], lines
    assert took < 60 and not list(out.iterdir())


def test_a_folder_refusing_writes_is_one_line_before_any_model(world, tmp_path: Path,
                                                                monkeypatch) -> None:
    """Read-only as root too: the probe write's open fails as a read-only mount makes it fail."""
    out = tmp_path / "readonly"
    out.mkdir()

    def refuse(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))    # EROFS

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(outputs, "open", refuse, raising=False)
    monkeypatch.setattr("gatebench.run._load_base", no_model)
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["run", "--ckpt", str(world["ckpt"]), "--protocol",
                                      str(world["protocol"]), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = _lines(result.output)
    assert len(lines) == 1, lines
    assert "--out: expected a writable folder" in lines[0] and "Read-only file system" in lines[0]
    assert str(out) in lines[0]
    assert time.monotonic() - began < 30


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    out = ensure_out_dir(tmp_path / "fresh")
    assert list(out.iterdir()) == []


def test_a_sigkilled_run_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = ensure_out_dir(tmp_path / "killed")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from gatebench.rundir.outputs import run_lock\n"
        f"with run_lock({str(out)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(GatebenchError, match=f"pid {holder.pid}"):
            with run_lock(out):
                pass
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with run_lock(out):      # the OS dropped the dead process's flock
        pass
