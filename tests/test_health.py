"""Image health on real (downscaled) calibration images and on synthetic corruptions of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatebench.metrics.corruptions import corrupt
from gatebench.metrics.health import assess, blank_score, garbled_score, health_stats

DATA = Path(__file__).parent / "data" / "health"
GARBLED = ("gate_3.0_06", "gate_3.0_10", "gate_3.0_17")
CLEAN = ("gate_learned_02", "gate_learned_07", "gate_learned_13")


def load(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))


@pytest.mark.parametrize("name", GARBLED)
def test_real_garbage_is_garbled_not_blank(name: str) -> None:
    health = assess(load(name))
    assert health.garbled and not health.blank        # measured scores 0.79, 0.61, 1.00


@pytest.mark.parametrize("name", CLEAN)
def test_real_clean_images_are_neither(name: str) -> None:
    health = assess(load(name))
    assert not health.garbled and not health.blank    # measured <= 0.41; blank <= 0.01


def test_real_black_frame_is_blank_and_not_garbled() -> None:
    health = assess(load("gate_3.0_11"))
    assert health.blank and not health.garbled and health.blank_score > 0.6   # measured 0.72


def test_colour_edges_separate_real_images_with_margin() -> None:
    edges = {n: health_stats(load(n))["colour_edges"] for n in GARBLED + CLEAN}
    assert min(edges[n] for n in GARBLED) > 8.5 and max(edges[n] for n in CLEAN) < 6.5


def test_score_does_not_depend_on_resolution() -> None:
    big = Image.open(DATA / "gate_3.0_10.png")
    assert garbled_score(big.resize((128, 128), Image.BOX)) == pytest.approx(
        garbled_score(big), abs=0.15)


@pytest.mark.parametrize("kind", ["noise", "streaks", "blotches"])
def test_synthetic_corruptions_of_real_clean_images(kind: str) -> None:
    for i, name in enumerate(CLEAN):
        clean = load(name)
        bad = corrupt(clean, kind, 0.6, seed=i)
        assert assess(bad).garbled and assess(bad, clean).garbled
        if kind != "blotches":       # mild blotches are excused by the twin (docstring figures)
            assert assess(corrupt(clean, kind, 0.3, seed=i), clean).garbled


def test_a_clean_image_against_a_different_clean_twin_is_not_garbled() -> None:
    assert not assess(load("gate_learned_07"), load("gate_learned_02")).garbled
    assert not assess(load("gate_learned_02"), load("gate_learned_13")).garbled


def test_blank_kinds() -> None:
    assert blank_score(np.zeros((64, 64, 3), np.uint8)) == 1.0
    assert blank_score(np.full((64, 64, 3), 250, np.uint8)) == 1.0
    assert blank_score(np.full((64, 64, 3), (90, 140, 60), np.uint8)) > 0.99   # uniform green
    health = assess(np.zeros((64, 64, 3), np.uint8))
    assert health.blank and not health.garbled


def test_score_cli_on_real_outputs_reports_both_rates_with_cis(tmp_path: Path) -> None:
    """The user's results.jsonl + PNGs (Chinese names), a target on blank_rate, report.md."""
    import json
    import shutil

    from click.testing import CliRunner

    from gatebench.cli import cli

    images = tmp_path / "outputs" / "test_gate_3.0"
    images.mkdir(parents=True)
    rows = []
    for i, name in enumerate(GARBLED + CLEAN + ("gate_3.0_11",)):
        file = f"{i:04d}_厨房.png"
        shutil.copy(DATA / f"{name}.png", images / file)
        rows.append({"prompt": "两个男人站在厨房里", "status": "success",
                     "layout": {"layout_text": "男人", "objects": [
                         {"name": "男人", "name_en": "person", "bbox": [0.1, 0.2, 0.5, 0.9]}]},
                     "image_path": f"outputs/test_gate_3.0/{file}"})
    layouts = tmp_path / "results.jsonl"
    layouts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                       encoding="utf-8")
    protocol = tmp_path / "health.toml"
    protocol.write_text('[scoring]\nbootstrap = 200\n\n[[targets]]\nmetric = "blank_rate"\n'
                        'op = "<="\nthreshold = 0.2\n', encoding="utf-8")
    out = tmp_path / "scored"
    args = ["score", "--images", str(images), "--layouts", str(layouts), "--protocol",
            str(protocol), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    garbled, blank = doc["metrics"]["garbled_rate"], doc["metrics"]["blank_rate"]
    assert garbled["value"] == pytest.approx(3 / 7) and blank["value"] == pytest.approx(1 / 7)
    assert garbled["ci_low"] < garbled["value"] < garbled["ci_high"] and blank["n"] == 7
    assert [t["metric"] for t in doc["targets"]] == ["blank_rate"] and doc["verdict"] == "pass"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| blank_rate |" in report and "![flagged images](flagged.png)" in report
    assert Image.open(out / "flagged.png").size[0] >= 4 * 200        # 4 thumbnails
    table = CliRunner().invoke(cli, args)
    assert "blank_rate" in table.output and "garbled_rate" in table.output
    # CLI overrides of the protocol's [scoring] thresholds; an impossible one is exit 2
    strict = CliRunner().invoke(cli, [*args, "--json", "--blank-threshold", "0.8"])
    assert json.loads(strict.output)["metrics"]["blank_rate"]["value"] == 0.0   # 0.72 < 0.8
    bad = CliRunner().invoke(cli, [*args, "--garbled-threshold", "1.5"])
    assert bad.exit_code == 2 and "--garbled-threshold: expected a value in (0, 1), got 1.5" in bad.output


def test_shapes_world_ground_truth_images_are_healthy() -> None:
    """32 px world images (upscaled to the working size): measured on all 500, garbled <= 0.18,
    blank <= 0.01; the good adapter's generated scale-1 images <= 0.34 absolute."""
    from gatebench.protocol import ASSETS_DIR

    files = sorted((ASSETS_DIR / "data" / "images" / "test").glob("*.png"))[:40]
    assert len(files) == 40
    for path in files:
        health = assess(path)
        assert health.garbled_score < 0.3 and health.blank_score < 0.2, path.name
