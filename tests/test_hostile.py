"""Hostile input (issue 14): every bad file or flag exits 2 with one line naming the file or
field and no traceback; a diverged log FAILS; inputs are never overwritten."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.fixtures import png_header_only, world_images
from gatebench.cli import cli
from tests.builders import user_state


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_bad_input(result, *names: str) -> str:
    """Exit 2, one non-empty line, no traceback, and each of ``names`` in that line."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _gatebench_ckpt(path: Path, **header: object) -> Path:
    document = {"format": "gatebench-adapter", "format_version": 1, "family": "user",
                "adapter_config": {}, "base_model": {}, "training": {}}
    document.update(header)
    document["state_dict"] = user_state(0.3)
    torch.save(document, path)
    return path


# --- checkpoint bytes ------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"hello, not torch", bytes(range(256)) * 4, b"{}",
                                     b"\x80\x02}q\x00."[:-1], b"PK\x03\x04garbage"])
def test_non_torch_bytes_named_pt(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "epoch_1.pt"
    path.write_bytes(payload)
    line = assert_bad_input(invoke("gates", path), "epoch_1.pt", "expected a PyTorch checkpoint")
    assert "weights_only" not in line and "trusted source" not in line


def test_torch_dict_without_gates(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "empty.pt")
    assert_bad_input(invoke("gates", tmp_path / "empty.pt"), "empty.pt", "expected adapter gates")


# --- safetensors metadata and gatebench headers ----------------------------------------------

@pytest.mark.parametrize("meta,field", [
    ("{not json", "invalid JSON"), ("[1, 2]", "'gatebench'"),
    (json.dumps({"format": "gatebench-adapter", "format_version": "2"}), "'format_version'"),
    (json.dumps({"training": "x"}), "'training'")])
def test_safetensors_metadata(tmp_path: Path, meta: str, field: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "a.safetensors"
    save_file(user_state(0.3), str(path), metadata={"gatebench": meta})
    assert_bad_input(invoke("gates", path), "a.safetensors", field)


@pytest.mark.parametrize("header,field", [
    ({"training": [1, 2]}, "'training'"), ({"training": {"step": "abc"}}, "'training.step'"),
    ({"training": {"gate_history": [[1]]}}, "'training.gate_history[0]'"),
    ({"training": {"gate_history": [["a", 0, 0, 0, 0]]}}, "'training.gate_history[0][0]'"),
    ({"training": {"gate_history": 5}}, "'training.gate_history'"),
    ({"adapter_config": [1]}, "'adapter_config'"), ({"format_version": 1.5}, "'format_version'")])
def test_gatebench_header_fields(tmp_path: Path, header: dict, field: str) -> None:
    path = _gatebench_ckpt(tmp_path / "h.pt", **header)
    line = assert_bad_input(invoke("gates", path), "h.pt", field)
    assert "rows" not in line and "five" not in line or "[step, mean, std, min, max]" in line


def test_integer_to_out_and_0d_gligen_weight(tmp_path: Path) -> None:
    state = user_state(0.3)
    state["dim_16.gated_attn.to_out.weight"] = 5
    torch.save(state, tmp_path / "int.pt")
    assert_bad_input(invoke("gates", tmp_path / "int.pt"), "int.pt",
                     "'dim_16.gated_attn.to_out.weight' to be a tensor")
    torch.save({"down.0.fuser.alpha_attn": torch.tensor([])}, tmp_path / "g.pt")
    assert_bad_input(invoke("gates", tmp_path / "g.pt"), "g.pt", "empty tensor")
    torch.save({"down.0.fuser.alpha_attn": torch.tensor(0.5),
                "down.0.fuser.attn.to_q.weight": torch.tensor(1.0)}, tmp_path / "g0.pt")
    result = invoke("gates", tmp_path / "g0.pt")
    assert result.exit_code in (0, 1) and "Traceback" not in result.output


# --- logs ------------------------------------------------------------------------------------

GOOD = "Step 1: Gate stats - mean: 0.1, std: 0.1, min: 0.0, max: 0.2\n"


@pytest.mark.parametrize("name,content,field", [
    ("big.log", "Step 99999999999999999999999: Gate stats - mean: 0.1, std: 0.1, min: 0.0, "
     "max: 0.2\n", "'step'"),
    ("s.jsonl", '{"step": 1, "gate_mean": "x"}\n', "'gate_mean'"),
    ("b.jsonl", '{"step": 1e400, "gate_mean": 0.1}\n', "'step'"),
    ("f.jsonl", '{"step": 1.5, "gate_mean": 0.1}\n', "'step'"),
    ("l.jsonl", '[1, 2]\n', "'step'"),
    ("u.jsonl", b'{"step": 1, "gate_mean": 0.1}\n\xff\xfe\n', "UTF-8")])
def test_bad_logs(tmp_path: Path, name: str, content: str | bytes, field: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_bad_input(invoke("gates", "--log", path), name, field)


def test_nan_gate_line_fails(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text(GOOD + "Step 2: Gate stats - mean: nan, std: nan, min: nan, max: nan\n")
    result = invoke("gates", "--log", path, "--json")
    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert document["verdict"] == "fail"
    assert any(f["code"] == "nan" and f["severity"] == "fail" for f in document["findings"])
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"step": 1, "gate_mean": 0.1}\n{"step": 2, "gate_mean": 1e400}\n')
    assert json.loads(invoke("gates", "--log", jsonl, "--json").output)["verdict"] == "fail"


# --- results.json / samples.jsonl for compare and report ------------------------------------

GOLDEN_RUN = Path(__file__).parent / "data" / "golden" / "run"


def _mutated_run(tmp_path: Path, name: str, edit) -> Path:
    import shutil

    run = tmp_path / name
    shutil.copytree(GOLDEN_RUN, run)
    document = json.loads((run / "results.json").read_text(encoding="utf-8"))
    edit(document)
    (run / "results.json").write_text(json.dumps(document), encoding="utf-8")
    return run / "results.json"


@pytest.mark.parametrize("name,edit,field", [
    ("results_str", lambda d: d.update(results="x"), "'results'"),
    ("protocol_null", lambda d: d.update(protocol=None), "'protocol'"),
    ("device_missing", lambda d: d.pop("device"), "'device'"),
    ("metrics_list", lambda d: d["results"][0].update(metrics=[1]), "'results[0].metrics'"),
    ("target_str", lambda d: d["targets"].append("x"), "'targets[")])
def test_bad_results_json(tmp_path: Path, name: str, edit, field: str) -> None:
    results = _mutated_run(tmp_path, name, edit)
    assert_bad_input(invoke("report", results, "--out", tmp_path / "r.md"), "results.json", field)
    assert_bad_input(invoke("compare", GOLDEN_RUN / "results.json", results), "results.json",
                     field)


@pytest.mark.parametrize("content,field", [(b'{"layout_id": 5}\n', "'layout_id'"),
                                           (b'\xff\n', "UTF-8"), (b'[1]\n', "JSON object")])
def test_bad_samples_jsonl(tmp_path: Path, content: bytes, field: str) -> None:
    results = _mutated_run(tmp_path, "run", lambda d: None)
    (results.parent / "samples.jsonl").write_bytes(content)
    assert_bad_input(invoke("report", results, "--out", tmp_path / "r.md"), "samples.jsonl", field)


# --- values, not only types: protocol fields and CLI flags -----------------------------------

SHAPES = Path(__file__).resolve().parent.parent / "protocols" / "shapes.toml"
WORLD_CKPT = (Path(__file__).resolve().parent.parent / "gatebench" / "world" / "assets" /
              "adapters" / "good" / "good_step_4000.pt")


@pytest.fixture(autouse=True)
def _quiet_libraries(monkeypatch: pytest.MonkeyPatch):
    """What `main()` sets for a CLI user; CliRunner calls the group directly."""
    request_finalizers: list = []
    for name in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "DIFFUSERS_NO_ADVISORY_WARNINGS",
                 "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("DIFFUSERS_VERBOSITY", "error")
    # the environment only counts before the first import; another test may have imported them
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for module in (transformers_logging, diffusers_logging):
        was = module.is_progress_bar_enabled()
        module.disable_progress_bar()
        if was:
            request_finalizers.append(module.enable_progress_bar)
    levels = [(m, m.get_verbosity()) for m in (transformers_logging, diffusers_logging)]
    for module, _ in levels:
        module.set_verbosity_error()
    yield
    for module, level in levels:
        module.set_verbosity(level)
    for undo in request_finalizers:
        undo()


def _protocol(tmp_path: Path, section: str | None, line: str, name: str = "p.toml") -> Path:
    """shapes.toml with ``line`` set in ``[section]`` (added when the section is missing)."""
    key = line.split("=")[0].strip()
    text = SHAPES.read_text(encoding="utf-8")
    lines, current, out, done = text.splitlines(), None, [], False
    for row in lines:
        if row.startswith("["):
            current = row.strip("[] ")
        if current == section and row.split("=")[0].strip() == key:
            continue
        out.append(row)
        if row.strip() == f"[{section}]" and not done:
            out.append(line)
            done = True
    if not done:
        out = ([line] + out) if section is None else out + [f"[{section}]", line]
    path = tmp_path / name
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("section,line,field", [
    ("generation", "batch_size = 0", "batch_size"), (None, "num_samples = -2", "num_samples"),
    ("scoring", "ci_level = 7.0", "ci_level"), ("gates", "collapse_fraction = 7.5",
                                                "collapse_fraction"),
    ("gates", "near_zero = -1", "near_zero"), ("generation", "gate_scales = []", "gate_scales"),
    ("generation", "gate_scales = [0.5, nan]", "gate_scales"),
    ("generation", "device = 'tpu9'", "device"), ("detection", "conf = inf", "conf")])
def test_protocol_values(tmp_path: Path, section: str | None, line: str, field: str) -> None:
    path = _protocol(tmp_path, section, line)
    out = tmp_path / "out"
    result = invoke("run", "--ckpt", WORLD_CKPT, "--protocol", path, "--out", out)
    assert_bad_input(result, "p.toml", field)
    assert not out.exists()     # refused before anything was written or loaded


def test_protocol_bom_and_markup_in_messages(tmp_path: Path) -> None:
    bom = tmp_path / "bom.toml"
    bom.write_text("\ufeff" + SHAPES.read_text(encoding="utf-8"), encoding="utf-8")
    from gatebench.protocol import load_protocol
    assert load_protocol(bom).name == "shapes"
    typo = _protocol(tmp_path, "generation", "stpes = 3")
    assert_bad_input(invoke("run", "--ckpt", WORLD_CKPT, "--protocol", typo),
                     "'stpes' in [generation]")


@pytest.mark.parametrize("flags,flag", [
    (["--num-samples", "-1"], "--num-samples"), (["--num-samples", "0"], "--num-samples"),
    (["--batch-size", "-1"], "--batch-size"), (["--device", "tpu9"], "--device"),
    (["--gate-scales", "nan"], "--gate-scales"), (["--gate-scales", ","], "--gate-scales"),
    (["--gate-scales", "1,x"], "--gate-scales"), (["--steps", "0"], "--steps")])
def test_run_flags(tmp_path: Path, flags: list[str], flag: str) -> None:
    out = tmp_path / "out"
    assert_bad_input(invoke("run", "--ckpt", WORLD_CKPT, "--protocol", "shapes", "--out", out,
                            *flags), flag)
    assert not out.exists()


def test_demo_zero_samples(tmp_path: Path) -> None:
    assert_bad_input(invoke("demo", "--num-samples", "0", "--out", tmp_path / "d"),
                     "--num-samples")
    assert_bad_input(invoke("score", "--images", tmp_path, "--layouts", tmp_path / "x.jsonl",
                            "--device", "tpu9"), "--device")


@pytest.mark.parametrize("widths", ["0", "-32", "", "32.7", "16,20", "2", "x"])
def test_check_init_widths(widths: str) -> None:
    assert_bad_input(invoke("check-init", "--init", "gligen", "--widths", widths), "--widths")


def test_check_init_text_dim_and_ckpt(tmp_path: Path) -> None:
    assert_bad_input(invoke("check-init", "--text-dim", "0"), "--text-dim")
    (tmp_path / "t.txt").write_text("hello")
    assert_bad_input(invoke("check-init", "--ckpt", tmp_path / "t.txt"), "t.txt")
    torch.save({k: v for k, v in user_state(0.0).items() if "to_out" not in k},
               tmp_path / "no_out.pt")
    assert_bad_input(invoke("check-init", "--ckpt", tmp_path / "no_out.pt"), "no_out.pt",
                     "to_out")


@pytest.mark.parametrize("state,field", [
    (user_state(0.3, widths=(16, 32), text_dim=8), "text_dim"),
    (user_state(0.3, widths=(16, 32), text_dim=64), "widths"),
    ({k: v for k, v in user_state(0.3, widths=(64,), text_dim=64).items()
      if "to_out" not in k}, "to_out")])
def test_adapter_checked_against_base_before_generating(tmp_path: Path, state: dict,
                                                        field: str) -> None:
    torch.save(state, tmp_path / "a.pt")
    out = tmp_path / "out"
    result = invoke("run", "--ckpt", tmp_path / "a.pt", "--protocol", "shapes", "--out", out,
                    "--num-samples", "1", "--steps", "1")
    assert_bad_input(result, "a.pt", field)
    assert not list(out.rglob("*.png"))     # no base image was generated first


# --- rich markup: user text is printed as text ------------------------------------------------

def test_markup_in_paths_is_printed_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "[bold]runs[/x]"
    folder.mkdir(parents=True)     # "[/x]" is a sub-folder "x]" of "[bold]runs["
    assert_bad_input(invoke("gates", folder / "missing[/x].pt"), "[bold]runs[/x]/missing[/x].pt")
    torch.save(user_state(0.3), folder / "e[red]1.pt")
    result = invoke("gates", folder)
    assert result.exit_code in (0, 1) and "Traceback" not in result.output
    assert "[bold]runs[/x]/e[red]1.pt" in result.output.replace("\n", "")


# --- outputs never overwrite inputs; --out that is a file; Ctrl-C ----------------------------

def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("target", ["results.json", "samples.jsonl"])
def test_report_out_onto_its_input(tmp_path: Path, target: str) -> None:
    results = _mutated_run(tmp_path, "run", lambda d: None)
    before = _digest(results.parent)
    assert_bad_input(invoke("report", results, "--out", results.parent / target), "--out", target)
    assert _digest(results.parent) == before


def test_compare_out_onto_an_input(tmp_path: Path) -> None:
    a = _mutated_run(tmp_path, "a", lambda d: None)
    b = _mutated_run(tmp_path, "b", lambda d: None)
    before = _digest(tmp_path)
    for out in (a, b, a.parent / "samples.jsonl"):
        assert_bad_input(invoke("compare", a, b, "--out", out), "--out")
    assert _digest(tmp_path) == before


def test_out_that_is_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    torch.save(user_state(0.3), tmp_path / "e.pt")
    assert_bad_input(invoke("gates", tmp_path / "e.pt", "--out", existing), "--out", "taken")
    assert_bad_input(invoke("run", "--ckpt", WORLD_CKPT, "--protocol", "shapes", "--out",
                            existing), "--out", "taken")
    assert existing.read_text() == "keep me"


def test_samples_and_report_written_atomically(tmp_path: Path, monkeypatch) -> None:
    import pandas as pd

    from gatebench.rundir.samples import write_samples_jsonl

    path = tmp_path / "samples.jsonl"
    path.write_text("old\n")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("gatebench.files.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_samples_jsonl(pd.DataFrame([{"layout_id": "a"}]), path)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]


def test_ctrl_c_exits_130(tmp_path: Path, monkeypatch) -> None:
    import gatebench.checkpoint as checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "inspect_checkpoint", interrupted)
    torch.save(user_state(0.3), tmp_path / "e.pt")
    result = invoke("gates", tmp_path / "e.pt")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "resume" in result.output


# --- wrong results: class vocabulary, 16-bit PNGs, bbox scale, decompression bombs -----------

def test_perfect_detections_on_the_shapes_world_score_one(tmp_path: Path) -> None:
    images, layouts, detections = world_images(tmp_path)
    result = invoke("score", "--images", images, "--layouts", layouts, "--detections", detections,
                    "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["metrics"]
    assert metrics["iou50_rate"]["value"] == pytest.approx(1.0)   # was 0: id 7 read as "train"
    with_protocol = invoke("score", "--images", images, "--layouts", layouts, "--detections",
                           detections, "--protocol", "shapes", "--json")
    assert with_protocol.exit_code == 0, with_protocol.output
    document = json.loads(with_protocol.output[with_protocol.output.index("{"):])
    assert document["metrics"]["iou50_rate"]["value"] == pytest.approx(1.0)
    assert document["info"]["detector_labels"] == 12       # the world's vocabulary, not COCO's


def test_gt_label_prefers_names_over_a_non_coco_category_id() -> None:
    from gatebench.layouts import LayoutObject
    from gatebench.metrics.detect import COCO80_NAMES, gt_label
    from gatebench.world.shapes import CLASS_NAMES_EN

    box = (0.1, 0.1, 0.5, 0.5)
    blue_square = LayoutObject("蓝色正方形", box, "blue square", 7)
    assert gt_label(blue_square, set(CLASS_NAMES_EN)) == "blue square"
    assert gt_label(blue_square, set(COCO80_NAMES) | {"blue square"}) == "blue square"
    assert gt_label(LayoutObject("摩托车", box, "motorbike", 4), set(COCO80_NAMES)) == "motorcycle"


def test_16_bit_png_is_not_white(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from gatebench.metrics.images import to_pil_rgb

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray((ramp / 257).round().astype(np.uint8)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a16 = np.asarray(to_pil_rgb(tmp_path / "g16.png")).astype(int)
    a8 = np.asarray(to_pil_rgb(tmp_path / "g8.png")).astype(int)
    assert np.abs(a16 - a8).max() <= 1 and a16.mean() < 200


def test_decompression_bomb_png(tmp_path: Path) -> None:
    images, layouts, detections = world_images(tmp_path, n=1)
    name = json.loads(layouts.read_text(encoding="utf-8").splitlines()[0])["image_path"]
    png_header_only(images / name, 60000, 60000)
    assert_bad_input(invoke("score", "--images", images, "--layouts", layouts, "--detections",
                            detections), name, "decompression bomb")


@pytest.mark.parametrize("objects,what", [
    ([[0.2, 0.3, 1.6, 0.9]], "a mix"),
    ([[0.1, 0.1, 0.5, 0.5], [100, 100, 500, 500]], "one scale"),
    ([[0.2, 0.3, 1.3, 0.9]], "inside [0, 1]")])
def test_bbox_scale_decided_from_all_four_values(tmp_path: Path, objects: list, what: str) -> None:
    layouts = tmp_path / "layouts.jsonl"
    row = {"image_path": "a.png", "caption": "x",
           "objects": [{"name": "dog", "bbox": b} for b in objects]}
    layouts.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (tmp_path / "images").mkdir()
    assert_bad_input(invoke("score", "--images", tmp_path / "images", "--layouts", layouts),
                     "layouts.jsonl:1", what)


def test_bbox_on_the_1000_scale_still_reads(tmp_path: Path) -> None:
    from gatebench.readers.bbox import parse_bbox

    assert parse_bbox([0, 1, 300, 400])[0] == pytest.approx((0.0, 0.001, 0.3, 0.4))
    assert parse_bbox([0.1, 0.2, 0.3, 0.4])[0] == pytest.approx((0.1, 0.2, 0.3, 0.4))
