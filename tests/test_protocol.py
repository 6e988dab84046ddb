from pathlib import Path

import pytest

from gatebench.errors import ProtocolError
from gatebench.protocol import load_protocol, parse_protocol


def test_shipped_oracle_protocol_holds_the_users_targets() -> None:
    proto = load_protocol("oracle-coco2014")
    targets = {t.metric: t for t in proto.targets}
    assert targets["iou50_rate"].op == ">" and targets["iou50_rate"].threshold == 0.70
    assert targets["clip_score"].threshold == 0.25 and targets["fid"].op == "<"
    assert targets["fid"].threshold == 30.0
    assert proto.generation.gate_scales == (0.0, 0.5, 1.0, 2.0)
    assert targets["iou50_rate"].applies_to(1.0) and not targets["iou50_rate"].applies_to(2.0)
    assert targets["iou50_rate"].passes(0.71) and not targets["iou50_rate"].passes(0.70)


def test_unknown_key_reports_file_and_line(tmp_path: Path) -> None:
    text = 'name = "x"\n\n[generation]\nsteps = 10\ngate_scale = [1.0]\n'
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text, tmp_path / "p.toml")
    assert "unknown key 'gate_scale'" in str(info.value)
    assert "p.toml:5" in str(info.value)


def test_wrong_type_and_bad_target(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match=r"expected an integer, got str '10'.*p.toml:2"):
        parse_protocol('[generation]\nsteps = "10"\n', tmp_path / "p.toml")
    bad = '[[targets]]\nmetric = "iou"\nop = ">"\nthreshold = 0.7\n'
    with pytest.raises(ProtocolError, match=r"expected a metric in .*got 'iou'.*p.toml:2"):
        parse_protocol(bad, tmp_path / "p.toml")
    with pytest.raises(ProtocolError, match="expected one of"):
        parse_protocol('[[targets]]\nmetric = "fid"\nop = "=<"\nthreshold = 3\n',
                       tmp_path / "p.toml")
    with pytest.raises(ProtocolError, match="unknown key or section 'gatess'"):
        parse_protocol('[gatess]\nnear_zero = 0.1\n', tmp_path / "p.toml")


def test_second_target_line_numbers(tmp_path: Path) -> None:
    text = ('[[targets]]\nmetric = "fid"\nop = "<"\nthreshold = 30\n\n'
            '[[targets]]\nmetric = "clip_score"\nop = ">"\nthreshold = "high"\n')
    with pytest.raises(ProtocolError, match=r"p.toml:9"):
        parse_protocol(text, tmp_path / "p.toml")


def test_cli_overrides_replace_sections() -> None:
    proto = load_protocol("oracle-coco2014").replace(generation={"steps": 4}, seed=7)
    assert proto.generation.steps == 4 and proto.seed == 7
    assert proto.generation.guidance_scale == 5.0


def test_missing_protocol_name_lists_the_known_ones() -> None:
    with pytest.raises(ProtocolError, match="oracle-coco2014"):
        load_protocol("no-such-protocol")


def test_every_shipped_protocol_parses() -> None:
    from gatebench.protocol import available_protocols

    found = available_protocols()
    assert {"oracle-coco2014", "shapes"} <= set(found)
    for path in found.values():
        proto = load_protocol(path)
        assert proto.targets and proto.generation.gate_scales


def test_cfg_treatments_follow_each_familys_reference(tmp_path: Path) -> None:
    from gatebench.generate import SamplerSettings, grounded_steps, resolve_uncond

    oracle = load_protocol("oracle-coco2014").generation
    assert oracle.uncond_boxes == "reference"
    assert resolve_uncond(oracle.uncond_boxes, "null") == "null"         # what it was made for
    assert load_protocol("shapes").generation.uncond_boxes == "off"      # as the world trained
    # the names before 0.2 still read, as what they did
    assert resolve_uncond("drop", "null") == "off" and resolve_uncond("keep", "off") == "grounded"
    assert SamplerSettings(2, 2.0, "DDIMScheduler", 1.0, "keep", 8, 8).uncond_boxes == "grounded"
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\n[generation]\nuncond_boxes = "nul"\n', encoding="utf-8")
    with pytest.raises(ProtocolError, match=r"uncond_boxes: expected one of 'reference'.*p.toml:3"):
        load_protocol(path)
    assert grounded_steps(0.3, 5) == 1 and grounded_steps(1.0, 20) == 20    # int(), as diffusers
