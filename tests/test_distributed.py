"""torchrun runs never hang (issue 14): with the real YOLO detector backend every rank reaches
every collective, and a rank that waits too long ends with one clear error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gatebench.cli import cli
from tests.builders import assert_same_metrics, free_port

ROOT = Path(__file__).resolve().parent.parent
WORLD_CKPT = ROOT / "gatebench" / "world" / "assets" / "adapters" / "good" / "good_step_4000.pt"


def _torchrun(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), *args],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_torchrun_with_the_world_yolo_equals_one_process(tmp_path: Path) -> None:
    """The shapes protocol's detector is ultralytics YOLO, whose import is a barrier: before the
    fix rank 0 sat in it while rank 1 sat in the all_reduce, for good."""
    args = ["--ckpt", str(WORLD_CKPT), "--protocol", "shapes", "--num-samples", "2", "--steps",
            "1", "--gate-scales", "1", "--device", "cpu"]
    multi = tmp_path / "multi"
    done = _torchrun(["-m", "gatebench", "run", *args, "--out", str(multi)],
                     {"GATEBENCH_DIST_TIMEOUT": "120"}, timeout=240)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    single = tmp_path / "single"
    assert CliRunner().invoke(cli, ["run", *args, "--out", str(single)]).exit_code == \
        done.returncode
    one = json.loads((single / "results.json").read_text())
    two = json.loads((multi / "results.json").read_text())
    assert two["generation"]["world_size"] == 2 and "detector" in two["models"]
    assert_same_metrics(two["results"], one["results"])


def test_a_stuck_rank_times_out_with_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        "import sys, time\n"
        "from gatebench.distributed import barrier, distributed, DistributedError\n"
        "rank, world = distributed()\n"
        "if rank == 1:\n"
        "    time.sleep(6)\n"
        "    sys.exit(0)\n"
        "try:\n"
        "    barrier('a test barrier')\n"
        "except DistributedError as exc:\n"
        "    print('ERROR ' + exc.render())\n"
        "    sys.exit(exc.exit_code)\n", encoding="utf-8")
    done = _torchrun([str(script)], {"GATEBENCH_DIST_TIMEOUT": "2",
                                     "PYTHONPATH": str(ROOT)}, timeout=60)
    line = next(x for x in done.stdout.splitlines() if x.startswith("ERROR"))
    assert "rank 0 gave up waiting for the other ranks at a test barrier" in line
    assert "GATEBENCH_DIST_TIMEOUT" in line


def test_timeout_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatebench.distributed import timeout_seconds
    from gatebench.errors import GatebenchError

    monkeypatch.setenv("GATEBENCH_DIST_TIMEOUT", "soon")
    with pytest.raises(GatebenchError, match="GATEBENCH_DIST_TIMEOUT"):
        timeout_seconds()
