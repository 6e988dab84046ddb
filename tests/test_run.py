"""Generation and `gatebench run` end to end on a tiny pixel-space world (CPU, seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gatebench.checkpoint import inspect_checkpoint, load_adapter
from gatebench.cli import cli
from gatebench.errors import CheckpointError
from gatebench.generate import ImageJob, Sampler, layout_seed
from gatebench.layouts import select_layouts
from gatebench.models import load_base_model
from gatebench.plan import sampler_settings
from gatebench.protocol import load_protocol
from gatebench.run import RunOptions, run_evaluation
from tests.builders import assert_same_metrics, free_port
from tests.run_builders import tiny_world, write_checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def loaded(world):
    protocol = load_protocol(world["protocol"])
    base = load_base_model(world["base"])
    layouts, _ = select_layouts(protocol)
    return protocol, base, layouts


def _jobs(layouts, scale, seed=7, folder=Path("/nonexistent")):
    return [ImageJob(lay, scale, layout_seed(seed, lay.layout_id), folder / f"{i}.png")
            for i, lay in enumerate(layouts)]


def test_gate_scale_zero_reproduces_the_base_model(world, loaded) -> None:
    protocol, base, layouts = loaded
    sampler = Sampler(base, sampler_settings(protocol, base))
    adapter = load_adapter(world["ckpt"], base)
    try:
        with_adapter, _ = sampler.sample(_jobs(layouts, 0.0), adapter)
        grounded, _ = sampler.sample(_jobs(layouts, 1.0), adapter)
    finally:
        adapter.remove()
    plain, _ = sampler.sample(_jobs(layouts, 0.0), None)
    assert torch.equal(with_adapter, plain)
    assert (grounded - plain).abs().max() > 1e-3      # the adapter does act at scale 1


def test_image_does_not_depend_on_batch_composition(loaded) -> None:
    protocol, base, layouts = loaded
    sampler = Sampler(base, sampler_settings(protocol, base))
    alone, _ = sampler.sample(_jobs(layouts[2:3], 0.0), None)
    batched, _ = sampler.sample(_jobs(list(reversed(layouts)) + layouts[:3], 0.0), None)
    # layout 2 sits at index 2 of the reversed list of 5
    assert torch.allclose(alone[0], batched[2], atol=1e-5)
    assert ((alone[0] * 255).round() == (batched[2] * 255).round()).float().mean() > 0.999


def test_run_writes_everything_and_resumes(world, tmp_path: Path) -> None:
    protocol = load_protocol(world["protocol"])
    second = write_checkpoint(world["root"] / "ckpt" / "epoch_10.pt", gate=0.2)
    out = tmp_path / "run"
    result = run_evaluation([world["ckpt"], second], protocol, RunOptions(out_dir=out))
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 2 and res["seed"] == 7 and res["n_layouts"] == 5
    assert {r["gate_scale"] for r in res["results"]} == {0.0, 1.0, 2.0}
    assert len(res["results"]) == 6
    # scale 0 is generated once and shared; 2 checkpoints x 2 scales x 5 layouts + 5
    assert res["generation"]["generated"] == 25
    assert res["checkpoints"][0]["sha256"] and res["models"]["base"]["weights"]
    iou = [t for t in res["targets"] if t["metric"] == "iou50_rate"]
    assert iou and not iou[0]["passed"] and "not computed" in iou[0]["note"]
    assert result.exit_code == 1 and res["verdict"] == "fail"
    samples = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 30
    assert {"image", "layout_id", "gate_scale", "garbled_score", "garbled", "boxes"} <= set(
        json.loads(samples[0]))
    assert "| `epoch_3.pt` |" in (out / "report.md").read_text(encoding="utf-8")
    # resume: remove two images, rerun: exactly those two are generated, nothing else
    folder = Path(res["generation"]["caches"][1]["folder"])
    removed = sorted(folder.glob("*.png"))[:2]
    for path in removed:
        path.unlink()
    again = run_evaluation([world["ckpt"], second], protocol, RunOptions(out_dir=out))
    assert again.results["generation"]["generated"] == 2
    assert again.results["generation"]["cached"] == 23
    same = [r["metrics"]["garbled_rate"]["value"] for r in again.results["results"]]
    assert same == [r["metrics"]["garbled_rate"]["value"] for r in res["results"]]


def test_same_file_name_in_two_folders_keeps_the_checkpoints_apart(world, tmp_path: Path) -> None:
    """Every training run writes final.pt: runA/final.pt and runB/final.pt must not mix."""
    from gatebench.compare import compare_runs
    from gatebench.rundir.saved import load_run

    protocol = load_protocol(world["protocol"]).replace(num_samples=2,
                                                        generation={"gate_scales": (0.0, 1.0)})
    first = write_checkpoint(tmp_path / "runA" / "final.pt", gate=0.5)
    second = write_checkpoint(tmp_path / "runB" / "final.pt", gate=-0.4)
    out = tmp_path / "run"
    run_evaluation([first, second], protocol, RunOptions(out_dir=out))
    run = load_run(out)
    labels = {row["checkpoint"]: row["label"] for row in run.results["results"]}
    assert labels == {str(first): "runA/final.pt", str(second): "runB/final.pt"}
    counts = run.samples.groupby(["checkpoint", "gate_scale"]).size().to_dict()
    assert counts == {(label, scale): 2 for label in labels.values() for scale in (0.0, 1.0)}
    folders = {c["adapter"]: c["folder"] for c in run.results["generation"]["caches"]}
    for path, label in labels.items():     # each label's scale-1 records are its own images
        mine = run.samples[(run.samples["checkpoint"] == label) & (run.samples["gate_scale"] == 1)]
        assert all(Path(p).parent == Path(folders[path]) for p in mine["image_path"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### `runA/final.pt`" in report and "### `runB/final.pt`" in report
    assert "| `runA/final.pt` | 1 | garbled_rate |" in report
    assert (out / "grid_runA_final.png").is_file() and (out / "grid_runB_final.png").is_file()
    same = compare_runs(run, run, n_boot=50)      # pairs records by label: nothing changed
    assert {(r.candidate_label, r.diff) for r in same.rows if r.gate_scale == 1.0 and
            r.kind == "paired"} == {("runA/final.pt", 0.0), ("runB/final.pt", 0.0)}


def test_recipe_change_never_mixes_images(world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    protocol = load_protocol(world["protocol"])
    run_evaluation([world["ckpt"]], protocol, RunOptions(out_dir=out))
    changed = protocol.replace(generation={"steps": 3})
    again = run_evaluation([world["ckpt"]], changed, RunOptions(out_dir=out))
    assert again.results["generation"]["cached"] == 0
    assert len(list((out / "images").iterdir())) == 4


def test_width_mismatch_is_an_error_naming_both(world, loaded, tmp_path: Path) -> None:
    _, base, _ = loaded
    wrong = write_checkpoint(tmp_path / "wrong.pt", widths=(640, 1280))
    with pytest.raises(CheckpointError, match=r"\[32, 64\].*\[640, 1280\]"):
        load_adapter(wrong, base, inspect_checkpoint(wrong))
    wrong_text = write_checkpoint(tmp_path / "text.pt", text_dim=4096)
    with pytest.raises(CheckpointError, match="4096"):
        load_adapter(wrong_text, base, inspect_checkpoint(wrong_text))


def test_run_command(world, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["run", "--ckpt", str(world["ckpt"]), "--protocol",
                                      str(world["protocol"]), "--num-samples", "2",
                                      "--gate-scales", "1", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 1, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["n_layouts"] == 2 and res["seed"] == 3
    assert {r["gate_scale"] for r in res["results"]} == {0.0, 1.0}
    assert "verdict: FAIL" in result.output
    missing = CliRunner().invoke(cli, ["run", "--ckpt", str(world["ckpt"]), "--protocol",
                                       str(world["protocol"]), "--base-model",
                                       str(tmp_path / "nowhere"), "--out", str(out)])
    assert missing.exit_code == 2 and "nowhere" in missing.output


def test_two_process_run_equals_one_process(world, tmp_path: Path) -> None:
    """torchrun shards the layouts; the gathered metrics equal the single-process run (image
    metrics exactly, the write diagnostics to float32 accumulation noise: builders.py)."""
    import os
    import subprocess
    import sys

    args = ["--ckpt", str(world["ckpt"]), "--protocol", str(world["protocol"]), "--device", "cpu"]
    single = tmp_path / "single"
    assert CliRunner().invoke(cli, ["run", *args, "--out", str(single)]).exit_code == 1
    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "gatebench", "run", *args, "--out",
                           str(multi)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    one = json.loads((single / "results.json").read_text())
    two = json.loads((multi / "results.json").read_text())
    assert two["generation"]["world_size"] == 2
    assert two["generation"]["generated"] == one["generation"]["generated"]
    assert_same_metrics(two["results"], one["results"])
    assert (multi / "samples.jsonl").read_text().count("\n") == (single / "samples.jsonl").read_text().count("\n")
