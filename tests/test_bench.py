"""Smoke tests of the scripts in bench/: each runs end to end at a small size, in its own process
(as a user runs it), exits 0, and reports figures that make sense. A refactor that breaks a bench
script fails here instead of on the next GPU machine (issue 19: benchmarks that cannot rot)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def run_script(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a bench script the way a user does (its own interpreter, another working directory)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, (f"{args[0]} exited {done.returncode}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    return done


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_generation_bench_sd15_dry_run(tmp_path: Path) -> None:
    """The sd15 shapes on the meta device, then the whole bench (both paths, scoring, a sweep)
    on the SD1.5-structured mini model; ratios side by side, PASS/FAIL rows, exit 0 whatever the
    timings say (no --strict)."""
    out = tmp_path / "gen.json"
    done = run_script([BENCH / "generation_bench.py", "--size", "sd15", "--dry-run", "--layouts", "2",
                       "--loop-images", "2", "--sweep", "2", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    meta = doc["dry_run"]["sd15_meta"]["meta_shapes"]
    assert meta["unet_with_adapter"] == [32, 4, 64, 64] and meta["vae_decode"] == [16, 3, 512, 512]
    assert doc["dry_run"]["sd15_meta"]["attn2_widths"] == [320, 640, 1280]
    batched, loop, summary = doc["batched"], doc["loop"], doc["summary"]
    assert batched["images"] == 2 * 2 and loop["images"] == 2          # 2 layouts x scales 0, 1
    assert batched["generation"]["nonfinite"] == 0
    for scale in ("0", "1"):                                            # scoring really scored
        assert {"clip_score", "fid", "kid", "iou50_rate", "garbled_rate"} <= set(
            batched["metrics_computed"][scale])
    ratios = summary["ratios"]
    assert set(ratios) == {"batched_over_loop", "generation_over_unet", "end_to_end_over_unet",
                           "diagnostics_over_generation"}
    assert all(finite_positive(v) for v in ratios.values())
    # the same run's numbers: end to end >= generation >= UNet-only
    assert ratios["end_to_end_over_unet"] >= ratios["generation_over_unet"] >= 1.0
    targets = {t["name"]: t for t in summary["targets"]}
    assert {n: (t["op"], t["threshold"]) for n, t in targets.items()} == {
        "batched_over_loop": (">=", 2.0), "generation_over_unet": ("<=", 1.10),
        "end_to_end_over_unet": ("<=", 1.25), "diagnostics_over_generation": ("<=", 1.03)}
    for name, t in targets.items():
        assert t["value"] == ratios[name]
        assert t["passed"] == (t["value"] >= t["threshold"] if t["op"] == ">=" else
                               t["value"] <= t["threshold"])
        assert f"{'PASS' if t['passed'] else 'FAIL'}  {name}" in done.stdout
    seconds = summary["seconds"]
    assert sum(seconds.values()) == pytest.approx(batched["total_s"], rel=1e-9)
    assert seconds["other"] > -0.05 * batched["total_s"]                # phases do not overlap
    assert sum(summary["shares"].values()) == pytest.approx(1.0)
    assert doc["image_match"]["images"] == 2 and doc["image_match"]["max_abs_diff"] <= 3
    assert [row["batch_size"] for row in doc["sweep"]] == [2]
    assert doc["exit"]["strict"] is False


def test_adapter_bench_quick_and_mini(tmp_path: Path) -> None:
    """Old (textbook) vs reassociated adapter at small token counts, then the Kolors-shaped
    UNet code path on a reduced-width model: equal outputs, ratios and operator counts."""
    out = tmp_path / "cases.json"
    run_script([BENCH / "adapter_bench.py", "--quick", "--reps", "1", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["dim"], r["boxes"]) for r in doc["rows"]] == [(1280, 8), (640, 8), (1280, 30)]
    for row in doc["rows"]:
        assert row["max_diff_over_effect"] <= 1e-5 and row["pass"] is None   # quick: no target
        assert all(finite_positive(row[k]) for k in ("textbook_s", "delta_s", "site_s"))
        assert row["site_ops"] < row["textbook_ops"] / 5        # a site is a few operators
    out = tmp_path / "mini.json"
    run_script([BENCH / "adapter_bench.py", "--size", "mini", "--batches", "1", "--out", out],
               tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["attn2_sites"] > 0 and doc["widths"] == [64, 128]
    row = doc["rows"][0]
    assert row["max_diff_over_effect"] <= 1e-4 and row["meter_changes_output"] is False
    assert all(finite_positive(row[k]) for k in ("base_s", "adapter_s", "textbook_s",
                                                  "adapter_meter_s"))


def test_gates_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "gates.json"
    done = run_script([BENCH / "gates_bench.py", "--count", "3", "--widths", "64,128",
                       "--text-dim", "64", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["checkpoints"] == 3 and doc["widths"] == [64, 128]
    assert doc["read_back"] == {"checkpoints_reported": 3, "max_abs_gate_error": pytest.approx(0, abs=1e-6),
                                "ok": True}
    assert doc["gates_cli"]["exit_code"] in (0, 1)                      # 1: a gate finding
    for part in ("torch_load", "inspect_checkpoint"):
        assert finite_positive(doc[part]["process_s"]) and finite_positive(doc[part]["peak_rss_mb"])
    assert finite_positive(doc["gates_cli"]["wall_s"])
    assert "gates read back: OK (3/3 checkpoints" in done.stdout


def test_health_calibration_on_the_shipped_images(tmp_path: Path) -> None:
    """The 7 downscaled real images in tests/data/health (labels from their README's table), one
    corruption strength: every flag agrees with its label, the threshold rule lands between the
    clean and the garbled colour edges."""
    out = tmp_path / "health.json"
    done = run_script([BENCH / "health_calibration.py", ROOT / "tests" / "data" / "health",
                       "--strengths", "0.6", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["images"] == 7 and doc["labels"] == {"clean": 3, "garbled": 3, "blank": 1}
    assert doc["absolute_agreement"] == 7
    edges = {f: r["colour_edges"] for f, r in doc["per_image"].items() if r["label"] != "blank"}
    clean = [v for f, v in edges.items() if doc["per_image"][f]["label"] == "clean"]
    garbled = [v for f, v in edges.items() if doc["per_image"][f]["label"] == "garbled"]
    assert max(clean) < doc["threshold_all"] < min(garbled)
    assert doc["leave_one_out"]["judged"] == 6 and doc["leave_one_out"]["right"] >= 5
    for kind in ("noise", "streaks", "blotches"):
        assert doc["synthetic"][kind]["0.6"] == {"absolute": 1.0, "vs_twin": 1.0}
    assert "flags agree with the label on 7/7 images" in done.stdout


def test_health_calibration_reads_labels_csv(tmp_path: Path) -> None:
    """A labels.csv folder (the layout of shared/seed/garbled-calibration), generated here."""
    import numpy as np
    from PIL import Image

    from gatebench.metrics.corruptions import corrupt

    data = tmp_path / "calib"
    data.mkdir()
    source = ROOT / "tests" / "data" / "health"
    rows = ["file,folder,label,prompt"]
    for name, label in (("gate_learned_07.png", "clean"), ("gate_learned_13.png", "clean"),
                        ("gate_3.0_10.png", "garbled")):
        shutil.copy(source / name, data / name)
        rows.append(f"{name},x,{label},p")
    clean = np.asarray(Image.open(source / "gate_learned_07.png").convert("RGB"))
    Image.fromarray(corrupt(clean, "streaks", 0.6, seed=1)).save(data / "gate_3.0_07.png")
    rows.append("gate_3.0_07.png,x,garbled,p")
    (data / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "h.json"
    done = run_script([BENCH / "health_calibration.py", data, "--size", "64", "--strengths", "0.6",
                       "--kinds", "noise", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["labels"] == {"clean": 2, "garbled": 2, "blank": 0}
    assert doc["twins"]["gate_3.0_07.png"]["garbled"] is True            # streaks vs its twin
    assert "twin check" in done.stdout


def test_hostile_checklist(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    done = run_script([BENCH / "hostile_checklist.py", "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["checks"] >= 60 and doc["passed"] == doc["checks"] and doc["tracebacks"] == 0
    assert doc["invalid_inputs_exit_2_one_line"] >= 50
    assert len(doc["rows"]) == doc["checks"] and all(r["passed"] for r in doc["rows"])
    assert f"{doc['passed']}/{doc['checks']} checks pass" in done.stdout


def test_gpu_check_script_is_sound(tmp_path: Path) -> None:
    """bench/gpu_check.sh parses, is shellcheck-clean where shellcheck is installed, and plans
    every GPU step of issue 19 (it runs on a GPU machine only)."""
    script = BENCH / "gpu_check.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True,
                              timeout=60)
        assert lint.returncode == 0, lint.stdout
    plan = subprocess.run([bash, str(script), "--plan"], capture_output=True, text=True,
                          check=True, timeout=30).stdout
    for needle in ("--device cuda --size kolors", "--device cuda --size sd15", "pytest -m gpu",
                   "gatebench demo --device cuda"):
        assert needle in plan
    bad = subprocess.run([bash, str(script), "--no-such-flag"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and bad.stdout.startswith("error:")


def _bench_imports(path: Path) -> set[str]:
    """The bench modules one bench file imports (``from bench.X import ...``)."""
    return set(re.findall(r"^\s*from bench\.(\w+) import", path.read_text(encoding="utf-8"),
                          re.MULTILINE))


def _scripts_and_modules() -> tuple[list[Path], list[Path]]:
    """bench/'s scripts (what a user runs) and its shared modules (what a bench file imports)."""
    files = sorted(BENCH.glob("*.py"))
    shared = set().union(*map(_bench_imports, files))
    return ([p for p in files if p.stem not in shared and p.stem != "__init__"]
            + sorted(BENCH.glob("*.sh")), [p for p in files if p.stem in shared])


def test_every_bench_script_has_a_smoke_test() -> None:
    """A new bench script comes with its smoke test (in any tests/test_*.py that names it)."""
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    scripts, _ = _scripts_and_modules()
    missing = [p.name for p in scripts if p.name not in tests]
    assert not missing, f"bench scripts without a smoke test: {missing}"


def test_every_bench_module_runs_under_a_scripts_smoke_test() -> None:
    """A shared bench module (fixtures, timing, targets, the loop reference...) is imported by a
    script, directly or through another module, so that script's smoke test runs it."""
    scripts, modules = _scripts_and_modules()
    assert {"fixtures", "timing", "targets", "loop_reference"} <= {p.stem for p in modules}
    reached = set().union(*(_bench_imports(p) for p in scripts if p.suffix == ".py"))
    while True:
        more = reached.union(*(_bench_imports(p) for p in modules if p.stem in reached))
        if more == reached:
            break
        reached = more
    missing = [p.name for p in modules if p.stem not in reached]
    assert not missing, f"bench modules no script imports (no smoke test runs them): {missing}"


def test_bench_targets_fail_without_a_finite_value() -> None:
    """bench/targets.py: a target passes only on a finite value on its side of the threshold."""
    sys.path.insert(0, str(ROOT))
    from bench.targets import Target, judge

    at_least, at_most = Target("a", ">=", 2.0, "x"), Target("b", "<=", 1.1, "y")
    assert at_least.passed(2.0) and not at_least.passed(1.99) and at_most.passed(1.1)
    assert not at_most.passed(1.2) and not at_most.passed(float("nan"))
    rows = judge({"a": 3.0}, [at_least, at_most])
    assert [(r["name"], r["value"], r["passed"]) for r in rows] == [("a", 3.0, True),
                                                                     ("b", None, False)]


def test_zeroshot_bench_tiny(tmp_path: Path) -> None:
    """bench/zeroshot_bench.py with the tests' tiny Grounding DINO: both query modes, ratios."""
    out = tmp_path / "zeroshot.json"
    run_script([BENCH / "zeroshot_bench.py", "--shape", "tiny", "--images", "1", "--repeats", "1",
                "--out", out], tmp_path)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["phrases"] == 6 and doc["images"] == 1
    for mode in ("joined", "per_phrase", "per_phrase_unshared"):
        assert finite_positive(doc["per_image"][mode]["cpu_ms"]), mode
    assert finite_positive(doc["per_phrase_over_joined_cpu"])
