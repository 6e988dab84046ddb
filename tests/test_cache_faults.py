"""Caches verify what they read: a cached image or FID reference-statistics file that does not
decode is deleted and recomputed with a one-line warning, and the numbers equal a clean run's."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatebench.image_cache import png_problem, write_png
from gatebench.metrics.fid import ModuleExtractor, ReferenceStats, extract_features, reference_stats
from gatebench.metrics.fid_maths import fid_from_features
from gatebench.protocol import load_protocol
from gatebench.run import RunOptions, run_evaluation
from gatebench.writes.records import sidecar
from tests.builders import TinyFeatures
from tests.run_builders import tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_world(tmp_path_factory.mktemp("world"))


def _metrics(results: dict) -> list[str]:
    return [json.dumps([r["checkpoint"], r["gate_scale"], r["metrics"]], sort_keys=True)
            for r in results["results"]]


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))
            if not p.name.endswith(".writes.png")}


def test_png_problem_names_each_fault(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    write_png(path, np.zeros((8, 12, 3), np.uint8), {})
    data = path.read_bytes()
    assert png_problem(path, 12, 8) is None
    assert "expected 8x12" in png_problem(path, 8, 12)
    for size in (0, 5, 30, len(data) // 2, len(data) - 4):
        path.write_bytes(data[:size])
        assert png_problem(path, 12, 8), size


def test_broken_cached_images_are_regenerated(world, tmp_path: Path, caplog) -> None:
    protocol = load_protocol(world["protocol"]).replace(num_samples=3,
                                                        generation={"gate_scales": (0.0, 1.0)})
    clean = run_evaluation([world["ckpt"]], protocol, RunOptions(out_dir=tmp_path / "clean"))
    out = tmp_path / "run"
    first = run_evaluation([world["ckpt"]], protocol, RunOptions(out_dir=out))
    images = out / "images"
    pngs = sorted(p for p in images.rglob("*__s1.png"))
    assert len(pngs) == 3 and all(sidecar(p).is_file() for p in pngs)
    zero, truncated, wrong = pngs
    zero.write_bytes(b"")
    truncated.write_bytes(truncated.read_bytes()[:100])
    write_png(wrong, np.zeros((4, 4, 3), np.uint8), {})          # decodes, the wrong size
    for path in (zero, truncated):
        sidecar(path).write_text("stale", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gatebench.generate"):
        again = run_evaluation([world["ckpt"]], protocol, RunOptions(out_dir=out))
    warned = [r.getMessage() for r in caplog.records if "regenerating cached image" in r.message]
    assert len(warned) == 3 and all("\n" not in line for line in warned)
    assert again.results["generation"]["generated"] == 3
    assert again.results["generation"]["cached"] == 3
    assert _metrics(again.results) == _metrics(first.results) == _metrics(clean.results)
    assert all(sidecar(p).read_text(encoding="utf-8") != "stale" for p in pngs)
    got, want = _pixels(images), _pixels(tmp_path / "clean" / "images")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def _real(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(8):
        paths.append(folder / f"real_{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), np.uint8)
                        ).save(paths[-1])
    return paths


def _wrong_shape(path: Path) -> None:
    stats = ReferenceStats.load(path)
    np.savez(path, mu=stats.mu, sigma=stats.sigma[:-1], features=stats.features, n=stats.n,
             recipe=np.array([f"{k}={v}" for k, v in sorted(stats.recipe.items())]))


def _missing_array(path: Path) -> None:
    stats = ReferenceStats.load(path)
    np.savez(path, mu=stats.mu, features=stats.features, n=stats.n,
             recipe=np.array([f"{k}={v}" for k, v in sorted(stats.recipe.items())]))


FAULTS = {
    "zero-bytes": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "wrong-shape": _wrong_shape,
    "missing-array": _missing_array,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_reference_stats_are_recomputed(tmp_path: Path, caplog, fault: str) -> None:
    real = _real(tmp_path / "real")
    extractor = ModuleExtractor(TinyFeatures(), name="tiny", input_size=16)
    fake = extract_features(_real(tmp_path / "fake")[:5], extractor)
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = reference_stats(real, extractor)
        reference_stats(real, extractor, cache_dir=cache)
        (path,) = cache.glob("*.npz")
        FAULTS[fault](path)
        with caplog.at_level(logging.WARNING, logger="gatebench.metrics.fid"):
            again = reference_stats(real, extractor, cache_dir=cache)
        warned = [r.getMessage() for r in caplog.records if "does not load" in r.message]
        assert len(warned) == 1 and "\n" not in warned[0] and str(path) in warned[0]
        reused = reference_stats(real, extractor, cache_dir=cache)    # the file is whole again
    assert ReferenceStats.load(path).n == 8
    for stats in (again, reused):
        for route in ("nuclear-norm", "eigen"):
            assert fid_from_features(stats.features, fake, route=route) == \
                fid_from_features(clean.features, fake, route=route)
        assert np.array_equal(stats.mu, clean.mu) and np.array_equal(stats.sigma, clean.sigma)


def test_reference_stats_of_another_recipe_are_replaced(tmp_path: Path, caplog) -> None:
    real = _real(tmp_path / "real")
    extractor = ModuleExtractor(TinyFeatures(), name="tiny", input_size=16)
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = reference_stats(real, extractor, cache_dir=cache)
        (path,) = cache.glob("*.npz")
        ReferenceStats(clean.mu, clean.sigma, clean.features, clean.n,
                       dict(clean.recipe, resize="other")).save(path)
        with caplog.at_level(logging.WARNING, logger="gatebench.metrics.fid"):
            again = reference_stats(real, extractor, cache_dir=cache)
    assert any("another recipe" in r.message for r in caplog.records)
    assert again.recipe == clean.recipe == ReferenceStats.load(path).recipe
