"""The adapter family registry: a third family, defined here only, is recognised by
inspect_checkpoint, named in the header check and loaded by load_adapter, with no edit to
gatebench/checkpoint.py or gatebench/adapters/families.py."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch

from gatebench.adapters import families
from gatebench.adapters.families import FAMILIES, family_of
from gatebench.adapters.family import AdapterFamily, gate_value
from gatebench.adapters.types import CheckpointInfo, GateEntry
from gatebench.checkpoint import inspect_checkpoint, load_adapter, save_checkpoint
from gatebench.errors import CheckpointError
from tests.builders import gligen_state, user_state

_FAKE_GATE = re.compile(r"^(?:module\.)?lane_(\d+)\.scale$")


class FakeRuntime:
    """Records what load_adapter handed it."""

    family = "fake"

    def __init__(self, info: CheckpointInfo, state: dict[str, torch.Tensor], base: Any) -> None:
        self.info, self.state, self.base = info, state, base

    def remove(self) -> None:
        pass


def _read(state: Mapping[str, Any], path: Path) -> tuple[GateEntry, ...]:
    return tuple(GateEntry(key=k, layer=f"lane_{m.group(1)}", kind="scale",
                           width=int(m.group(1)), raw=gate_value(state[k], k, path))
                 for k in state if (m := _FAKE_GATE.match(k)))


FAKE = AdapterFamily(
    name="fake", example_key="lane_8.scale",
    recognise=lambda keys: any(_FAKE_GATE.match(k) for k in keys), read_gates=_read,
    forward_config=lambda header, state: {"family": "fake", **(header.get("adapter_config") or {})},
    reference_uncond=lambda info: "off", runtime=FakeRuntime)


@pytest.fixture
def fake_family(monkeypatch: pytest.MonkeyPatch) -> AdapterFamily:
    monkeypatch.setitem(families.FAMILIES, FAKE.name, FAKE)
    return FAKE


def _fake_state() -> dict[str, torch.Tensor]:
    return {"module.lane_8.scale": torch.tensor([0.25]), "lane_8.proj": torch.ones(2, 2),
            "lane_4.scale": torch.tensor(-0.5)}


def test_builtin_families_in_recognition_order() -> None:
    assert list(FAMILIES) == ["user", "gligen"] and FAMILIES is families.FAMILIES
    assert family_of("gligen").name == "gligen"
    with pytest.raises(CheckpointError, match=r"expected adapter family 'user' or 'gligen', "
                                              r"got 'fake'"):
        family_of("fake")


def test_fake_family_inspected_and_loaded(tmp_path: Path, fake_family: AdapterFamily) -> None:
    path = tmp_path / "fake.pt"
    torch.save(_fake_state(), path)
    info = inspect_checkpoint(path)
    assert (info.format, info.family) == ("fake", "fake")
    assert [(g.layer, g.raw) for g in info.gates] == [("lane_8", 0.25), ("lane_4", -0.5)]
    assert info.widths == (4, 8)
    assert info.adapter_config == {"family": "fake"} and info.reference_uncond == "off"

    base = object()
    runtime = load_adapter(path, base, info)
    assert isinstance(runtime, FakeRuntime) and runtime.info is info and runtime.base is base
    assert sorted(runtime.state) == ["lane_4.scale", "lane_8.proj", "lane_8.scale"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_fake_family_in_a_gatebench_file(tmp_path: Path, suffix: str,
                                         fake_family: AdapterFamily) -> None:
    state = {k.removeprefix("module."): v for k, v in _fake_state().items()}
    path = save_checkpoint(tmp_path / f"f{suffix}", state, family="fake",
                           adapter_config={"lanes": 2})
    info = inspect_checkpoint(path)
    assert (info.format, info.family) == ("gatebench", "fake")
    assert info.adapter_config == {"family": "fake", "lanes": 2}
    assert isinstance(load_adapter(path, object()), FakeRuntime)


def test_unregistered_family_refused_with_the_registry_names(tmp_path: Path,
                                                             fake_family: AdapterFamily) -> None:
    path = save_checkpoint(tmp_path / "x.pt", user_state(0.1), family="other", adapter_config={})
    with pytest.raises(CheckpointError, match=r"'family' to be 'user', 'gligen' or 'fake', "
                                              r"got str 'other'"):
        inspect_checkpoint(path)


def test_builtin_families_win_over_a_later_one(tmp_path: Path, fake_family: AdapterFamily) -> None:
    """Recognition goes in FAMILIES order: a file with user and fake keys stays a user file."""
    path = tmp_path / "both.pt"
    torch.save({**user_state(0.2), **_fake_state()}, path)
    assert inspect_checkpoint(path).family == "user"
    torch.save({**gligen_state(0.3, -0.1, blocks=1), **_fake_state()}, path)
    assert inspect_checkpoint(path).family == "gligen"


def test_no_family_lists_every_example_key(tmp_path: Path, fake_family: AdapterFamily) -> None:
    path = tmp_path / "none.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"keys like 'dim_640.gated_attn.gate' or "
                                              r"'...fuser.alpha_attn' or 'lane_8.scale'"):
        inspect_checkpoint(path)


def test_register_family_refuses_a_known_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    families.register_family(FAKE)
    assert list(families.FAMILIES)[-1] == "fake"
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(FAKE)


def test_checkpoint_reader_names_no_family() -> None:
    """checkpoint.py holds no family's key pattern or name: families live in their modules."""
    source = (Path(__file__).resolve().parent.parent / "gatebench" / "checkpoint.py").read_text()
    code = source.split('"""', 2)[2]        # past the module docstring
    assert "gated_attn" not in code and "fuser" not in code
    assert '"user"' not in code and '"gligen"' not in code

