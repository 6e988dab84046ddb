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

    from gatebench.cli.support import _once_per_message

    shown: list[str] = []
    show = _once_per_message(lambda message, *args, **kwargs: shown.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        for _ in range(3):
            with warnings.catch_warnings():      # what resets the built-in "once" registries
                warnings.simplefilter("ignore")
            warnings.warn("small-N FID", UserWarning)
        warnings.warn("another one", UserWarning)
    assert shown == ["small-N FID", "another one"]
