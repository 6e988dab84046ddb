import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gatebench.cli import cli
from tests.builders import user_state, write_series, write_train_log

COMMANDS = ["run", "gates", "score", "compare", "report", "check-init", "demo", "train"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_every_command_and_version() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
    assert invoke("--version").output.startswith("gatebench, version")


def test_user_error_is_one_line_exit_2_and_debug_shows_traceback(tmp_path: Path) -> None:
    result = invoke("gates", str(tmp_path / "missing.pt"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.pt" in lines[0] and "Traceback" not in result.output
    debug = invoke("--debug", "gates", str(tmp_path / "missing.pt"))
    assert debug.exit_code != 0 and debug.exception is not None


def test_gates_json_schema_and_exit_codes(tmp_path: Path) -> None:
    write_series(tmp_path / "bad", [3.0, 2.0, 1.0, 0.29])
    result = invoke("gates", str(tmp_path / "bad"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["schema_version"] == 1 and doc["verdict"] == "fail"
    assert {"path", "sha256", "gates", "stats", "findings"} <= set(doc["checkpoints"][0])
    assert any(f["code"] == "collapse" for f in doc["findings"])
    write_series(tmp_path / "good", [0.2, 0.3, 0.4])
    assert invoke("gates", str(tmp_path / "good")).exit_code == 0


def test_gates_folder_with_train_log_and_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_series(run, [0.2, 0.3, 0.5])
    write_train_log(run / "train.log", [(100, 0.1, 0, 0, 0.2), (200, 0.3, 0, 0, 0.5)])
    out = tmp_path / "out"
    result = invoke("gates", str(run), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "train.log" in result.output
    assert (out / "gate_trajectory.png").stat().st_size > 1000
    assert "## Gates" in (out / "gates.md").read_text()
    doc = json.loads((out / "gates.json").read_text())
    assert doc["verdict"] == "warn"          # only the user forward's single-box limit
    assert {f["code"] for f in doc["findings"]} == {"single_box_unlocalisable"}


def test_gates_needs_input_and_rejects_unsafe(tmp_path: Path) -> None:
    assert invoke("gates").exit_code == 2
    path = tmp_path / "x.pt"
    torch.save({"dim_16.gated_attn.gate": torch.zeros(1), "f": print}, path)
    result = invoke("gates", str(path))
    assert result.exit_code == 2 and "refused to load" in result.output


@pytest.mark.parametrize("command", ["compare", "report"])
def test_compare_and_report_reject_missing_input_with_exit_2(command: str, tmp_path: Path) -> None:
    result = invoke(command, *[str(tmp_path / "missing.json")] * (2 if command == "compare" else 1))
    assert result.exit_code == 2 and "missing.json" in result.output


def test_check_init_detects_legacy_and_deadlock() -> None:
    assert invoke("check-init", "--init", "gligen", "--init", "zero-out").exit_code == 0
    result = invoke("check-init", "--init", "deadlock", "--json")
    assert result.exit_code == 1
    (check,) = json.loads(result.output)
    assert check["identity_ok"] and not check["gradient_ok"]
    legacy = json.loads(invoke("check-init", "--init", "legacy", "--json").output)[0]
    assert not legacy["identity_ok"] and legacy["gradient_ok"]


def test_check_init_on_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "dead.pt"
    torch.save(user_state(0.0, zero_out=True, widths=(32, 64), text_dim=8), path)
    result = invoke("check-init", "--ckpt", str(path), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)[0]["gradient_ok"] is False


def test_each_warning_text_is_shown_once_even_across_catch_warnings() -> None:
    import warnings

    from gatebench.render.console import _once_per_message

    shown: list[str] = []
    show = _once_per_message(lambda message, *args, **kwargs: shown.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        for _ in range(3):
            with warnings.catch_warnings():      # what resets the built-in "once" registries
                warnings.simplefilter("ignore")
            warnings.warn("small-N FID", UserWarning, stacklevel=1)
        warnings.warn("another one", UserWarning, stacklevel=1)
    assert shown == ["small-N FID", "another one"]


SETTINGS = ("[data] layouts (or --layouts)", "[data] image_dir",
            "[models] base_model (or --base-model)", "[models] detector", "[models] clip_model",
            "[models] inception_weights")


def test_run_on_a_new_machine_lists_every_missing_input_at_once(tmp_path: Path,
                                                                monkeypatch) -> None:
    """A folder holding only a checkpoint, no protocol given: one block that names the protocol
    chosen and EVERY input it needs, each with its key or flag and what must be there; exit 2,
    no traceback, before any model loads and before the run folder is made."""
    import gatebench.run

    def no_run(*args, **kwargs):
        raise AssertionError("the run started although inputs are missing")

    monkeypatch.setattr(gatebench.run, "run_evaluation", no_run)
    monkeypatch.chdir(tmp_path)
    torch.save(user_state(0.3), tmp_path / "epoch_10.pt")
    result = invoke("run", "--ckpt", "epoch_10.pt")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    text = result.output
    assert "protocol 'oracle-coco2014' (chosen because no --protocol was given)" in text
    assert "6 inputs that are not there" in text and text.count("\n  - ") == 6
    for setting in SETTINGS:
        assert f"  - {setting}: expected " in text, setting
    assert "a missing path 'data/coco2014_cn_val_clean.jsonl'" in text
    assert "weights-inception-2015-12-05-6726825d.pth" in text     # torch-fidelity's file name
    assert "diffusers-format" in text and "config.json" in text and "YOLO" in text
    assert f"resolved from {tmp_path}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_10.pt"]   # no gatebench-out/


def test_run_lists_only_what_is_missing_and_names_no_default(tmp_path: Path, monkeypatch) -> None:
    """Inputs given by flag or present on disk drop out of the list; a protocol the user named
    is not called chosen; a folder where a file belongs is named as such."""
    monkeypatch.chdir(tmp_path)
    torch.save(user_state(0.3), tmp_path / "e.pt")
    (tmp_path / "layouts.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "yolo.pt").mkdir()
    protocol = tmp_path / "mine.toml"
    protocol.write_text('name = "mine"\n[models]\nbase_model = "nowhere"\ndetector = "yolo.pt"\n',
                        encoding="utf-8")
    result = invoke("run", "--ckpt", "e.pt", "--protocol", str(protocol), "--layouts",
                    "layouts.jsonl")
    assert result.exit_code == 2, result.output
    assert "protocol 'mine' names 2 inputs" in result.output and "chosen" not in result.output
    assert "[data] layouts" not in result.output
    assert "[models] base_model (or --base-model): expected" in result.output
    assert "got a folder without config.json 'yolo.pt'" in result.output


def test_the_shipped_world_protocol_has_every_input() -> None:
    from gatebench.inputs import missing_inputs
    from gatebench.protocol import load_protocol

    assert missing_inputs(load_protocol("shapes")) == []
    unset = load_protocol("shapes").replace(data={"layouts": None}, models={"base_model": None})
    assert [(m.key, m.got) for m in missing_inputs(unset)] == [
        ("layouts", "nothing (not set)"), ("base_model", "nothing (not set)")]
