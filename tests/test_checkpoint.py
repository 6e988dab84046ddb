import math
import zipfile
from pathlib import Path

import pytest
import torch

from gatebench.checkpoint import inspect_checkpoint, read_raw, save_checkpoint
from gatebench.errors import CheckpointError, UnsafeCheckpointError
from tests.builders import gligen_state, user_state


@pytest.mark.parametrize("prefix", ["", "module."])
def test_user_format_with_and_without_ddp_prefix(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "epoch_10.pt"
    torch.save(user_state((0.2, -0.4), prefix=prefix), path)
    info = inspect_checkpoint(path)
    assert info.format == "user" and info.family == "user"
    assert info.widths == (16, 32)
    assert [g.raw for g in info.gates] == pytest.approx([0.2, -0.4])
    assert info.gates[0].effective == pytest.approx(math.tanh(0.2))
    assert info.gates[0].out_proj_zero is False
    assert len(info.sha256) == 64


def test_gligen_fuser_format(tmp_path: Path) -> None:
    path = tmp_path / "gligen.bin"
    torch.save(gligen_state(0.3, -0.1, blocks=3), path)
    info = inspect_checkpoint(path)
    assert info.family == "gligen"
    kinds = sorted({g.kind for g in info.gates})
    assert kinds == ["alpha_attn", "alpha_dense"] and len(info.gates) == 6
    assert info.gates[0].width == 16
    assert [g.raw for g in info.gates if g.kind == "alpha_attn"] == pytest.approx([0.3] * 3)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_gatebench_format_round_trip(tmp_path: Path, suffix: str) -> None:
    path = save_checkpoint(
        tmp_path / f"step_200{suffix}", user_state(0.05), family="user",
        adapter_config={"widths": [16, 32], "text_dim": 8},
        base_model={"path": "base", "sha256": "abc"},
        training={"step": 200, "epoch": 1, "init_scheme": "gligen", "gate_init": 0.0,
                  "scale_min": 0.5, "scale_max": 1.0, "gate_history": [[100, 0.01, 0, 0, 0.02],
                                                                        [200, 0.05, 0, 0, 0.1]]})
    info = inspect_checkpoint(path)
    assert info.format == "gatebench"
    assert info.training.step == 200 and info.training.init_scheme == "gligen"
    assert info.training.gate_history[1][0] == 200
    assert info.adapter_config["text_dim"] == 8 and info.base_model["sha256"] == "abc"
    if suffix == ".pt":  # our format loads with plain weights_only torch.load
        obj = torch.load(path, weights_only=True)
        assert obj["format"] == "gatebench-adapter"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"dim_16.gated_attn.gate": torch.zeros(1), "x": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_missing_empty_truncated_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nope.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        inspect_checkpoint(empty)
    good = tmp_path / "good.pt"
    torch.save(user_state(0.1), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="expected a PyTorch checkpoint"):
        inspect_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("Step 100: gate 0.1\n")
    with pytest.raises(CheckpointError, match="expected a PyTorch checkpoint"):
        inspect_checkpoint(text)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 32)
    with pytest.raises(CheckpointError, match="safetensors"):
        inspect_checkpoint(bad_st)


def test_state_without_gates_says_what_it_found(tmp_path: Path) -> None:
    path = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(2), "conv_in.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"got 2 keys with none of them \(conv_in.weight"):
        inspect_checkpoint(path)


def test_wrapped_state_dict_is_found(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": user_state(0.3), "epoch": 3}, path)
    state, header = read_raw(path)
    assert "dim_16.gated_attn.gate" in state and header == {}


def test_reading_is_memory_mapped_zip(tmp_path: Path) -> None:
    path = tmp_path / "epoch_1.pt"
    torch.save(user_state(0.1), path)
    assert zipfile.is_zipfile(path)
    state, _ = read_raw(path)
    assert float(state["dim_16.gated_attn.gate"]) == pytest.approx(0.1)
