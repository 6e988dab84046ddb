"""Scoring off the critical path: images scored from memory, adapters loaded once, twins once.

Each shortcut must give exactly the numbers of the long way round (read the PNGs back, load
every adapter again, analyse every twin again)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatebench.checkpoint import inspect_checkpoint, load_adapter
from gatebench.generate import ImageJob, Sampler, SamplerSettings, layout_seed
from gatebench.image_cache import KeptImages
from gatebench.layouts import select_layouts
from gatebench.models import load_base_model
from gatebench.plan import LoadedAdapters, generate_all, preflight_adapters, sampler_settings
from gatebench.protocol import load_protocol
from gatebench.run import RunOptions, run_evaluation
from gatebench.score import ImageItem, score_images
from tests.run_builders import tiny_world, write_checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_world(tmp_path_factory.mktemp("world"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_kept_images_stay_within_their_budget() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    keep = KeptImages(max_bytes=2 * image.nbytes)
    assert keep.put(Path("a.png"), image) and keep.put(Path("b.png"), image)
    assert not keep.put(Path("c.png"), image)           # over budget: on disk only
    assert not keep.put(Path("a.png"), image)           # already there
    assert keep.get(Path("a.png")) is image and keep.get(Path("c.png")) is None
    assert keep.get(None) is None and len(keep) == 2 and keep.bytes == 2 * image.nbytes


def test_a_run_scores_from_memory_and_loads_each_adapter_once(world, tmp_path: Path) -> None:
    protocol = load_protocol(world["protocol"])
    second = write_checkpoint(tmp_path / "ckpt" / "epoch_10.pt", gate=0.2)
    fast = run_evaluation([world["ckpt"], second], protocol,
                          RunOptions(out_dir=tmp_path / "fast", health_prefetch="on"))
    slow = run_evaluation([world["ckpt"], second], protocol,
                          RunOptions(out_dir=tmp_path / "slow", keep_images_bytes=0))
    generation = fast.results["generation"]
    assert generation["adapter_loads"] == 2                 # the preflight's loads, reused
    assert generation["images_kept_in_memory"] == generation["generated"] == 25
    assert generation["health_prefetched"] == 25          # all started while generating
    assert slow.results["generation"]["images_kept_in_memory"] == 0
    assert [r["metrics"] for r in fast.results["results"]] == \
        [r["metrics"] for r in slow.results["results"]]
    columns = [c for c in fast.samples.columns if c != "image_path"]
    assert fast.samples[columns].to_json() == slow.samples[columns].to_json()
    # every PNG is still written, and holds exactly the pixels that were scored
    for folder in ("fast", "slow"):
        assert len(list((tmp_path / folder / "images").rglob("*.png"))) == 25


def test_generate_all_items_carry_the_written_pixels_and_reuse_the_preflight(
        world, tmp_path: Path) -> None:
    protocol = load_protocol(world["protocol"])
    base = load_base_model(world["base"])
    layouts, _ = select_layouts(protocol)
    infos = [inspect_checkpoint(world["ckpt"]),
             inspect_checkpoint(write_checkpoint(tmp_path / "b" / "other.pt", gate=-0.3))]
    adapters = preflight_adapters(base, infos)
    assert adapters.loads == 2 and adapters.bytes > 0
    keep = KeptImages()
    items, stats, _ = generate_all(base, Sampler(base, sampler_settings(protocol, base)), infos,
                                   layouts, protocol, root=tmp_path / "reused", batch=4,
                                   keep=keep, adapters=adapters)
    assert adapters.loads == 2 and adapters.reused == 2 and stats.generated == len(keep)
    again, _, _ = generate_all(base, Sampler(base, sampler_settings(protocol, base)), infos,
                               layouts, protocol, root=tmp_path / "fresh", batch=4)
    for key, group in items.items():
        for item, other in zip(group, again[key], strict=True):
            assert item.image is not None and np.array_equal(item.image, _pixels(item.image_path))
            assert np.array_equal(item.image, _pixels(other.image_path))   # fresh loads: same
            if item.reference_image_path is not None:
                assert np.array_equal(item.reference_image, _pixels(item.reference_image_path))
    assert base.unet is not None and not any(        # every adapter detached at the end
        m._forward_hooks for m in base.unet.modules() if m._forward_hooks)


def test_an_adapter_over_the_budget_is_loaded_again(world) -> None:
    base = load_base_model(world["base"])
    info = inspect_checkpoint(world["ckpt"])
    loaded = LoadedAdapters(max_bytes=0)
    loaded.check(info, base)
    runtime = loaded.take(info, base)
    runtime.remove()
    assert loaded.loads == 2 and loaded.reused == 0


def test_a_gligen_runtime_detaches_and_attaches_the_same_copy(tmp_path: Path) -> None:
    from tests.model_builders import make_tiny_sd
    from tests.test_gligen import LAYOUTS, gligen_checkpoint

    folder = make_tiny_sd(tmp_path)
    ckpt = gligen_checkpoint(folder, tmp_path / "gligen.pt")
    base = load_base_model(folder)
    original = base.unet
    info = inspect_checkpoint(ckpt)
    sampler = Sampler(base, SamplerSettings(2, 2.0, "DDIMScheduler", 1.0, "drop", 16, 16))
    jobs = [ImageJob(lay, 1.0, layout_seed(1, lay.layout_id), Path("-")) for lay in LAYOUTS]
    fresh = load_adapter(ckpt, base, info)
    hooks = len(fresh.handles)
    try:
        expected, _ = sampler.sample(jobs, fresh)
    finally:
        fresh.remove()
    assert fresh.handles == [] and base.unet is original
    loaded = preflight_adapters(base, [info])
    assert base.unet is original and loaded.bytes > 0      # checked, detached, kept
    runtime = loaded.take(info, base)
    try:
        assert base.unet is runtime.unet is not original
        runtime.attach()                                    # attached already: nothing changes
        assert len(runtime.handles) == hooks > 0
        reused, _ = sampler.sample(jobs, runtime)
    finally:
        runtime.remove()
    assert base.unet is original and loaded.loads == 1
    assert np.array_equal(reused.numpy(), expected.numpy())


def test_scoring_from_memory_equals_scoring_the_files(tmp_path: Path) -> None:
    """The shapes world's detector, CLIP and FID features and image health, from the same
    pixels handed over in memory or read from the PNGs: the same records and metrics."""
    from gatebench.metrics.evalmodels import load_eval_models
    from gatebench.metrics.twin_cache import TwinCache

    protocol = load_protocol("shapes").replace(num_samples=12)
    layouts, _ = select_layouts(protocol)
    models = load_eval_models(protocol, device="cpu", layouts=layouts)
    paths = [Path(protocol.data.image_dir) / lay.image_path for lay in layouts]
    twins = paths[1:] + paths[:1]                 # a stand-in gate-0 twin for each image
    on_disk = [ImageItem(p, lay, 1.0, t) for p, lay, t in zip(paths, layouts, twins, strict=True)]
    in_memory = [ImageItem(p, lay, 1.0, t, image=_pixels(p), reference_image=_pixels(t))
                 for p, lay, t in zip(paths, layouts, twins, strict=True)]
    kwargs = {**models.score_kwargs(), "cache_dir": tmp_path}
    files = score_images(on_disk, protocol, **kwargs)
    cache = TwinCache()
    memory = score_images(in_memory, protocol, **kwargs, twin_cache=cache)
    cached = score_images(on_disk, protocol, **kwargs, twin_cache=cache)   # twins: cache hits
    assert cache.hits == len(paths)
    for result in (memory, cached):
        assert result.samples.to_json() == files.samples.to_json()
        assert {k: v.to_dict() for k, v in result.metrics.items()} == \
            {k: v.to_dict() for k, v in files.metrics.items()}
    assert {"fid", "kid", "clip_score", "iou50_rate", "garbled_rate"} <= set(files.metrics)
    assert json.dumps(files.to_dict(), default=str) == json.dumps(memory.to_dict(), default=str)


def test_the_detector_ceiling_skips_image_health_and_keeps_its_numbers() -> None:
    """The ceiling reports detection only: without the health cues its numbers are the same and
    the health rates are not computed (rather than computed and thrown away)."""
    from gatebench.metrics.evalmodels import load_eval_models
    from gatebench.score_run import detector_ceiling

    protocol = load_protocol("shapes").replace(num_samples=8)
    layouts, _ = select_layouts(protocol)
    models = load_eval_models(protocol, device="cpu", layouts=layouts)
    items = [ImageItem(path, lay) for lay, path in models.real_images]
    full = score_images(items, protocol, detector=models.detector)
    lean = score_images(items, protocol, detector=models.detector, image_health=False)
    assert {"garbled_rate", "blank_rate"} <= set(lean.not_computed)
    assert not {"garbled_rate", "blank_rate"} & set(lean.metrics)
    assert {k: v.to_dict() for k, v in lean.metrics.items()} == \
        {k: v.to_dict() for k, v in full.metrics.items() if k in lean.metrics}
    assert lean.samples["garbled"].isna().all() and lean.samples["garbled_score"].isna().all()
    ceiling = detector_ceiling(protocol, models)
    assert ceiling["metrics"] == {k: v.to_dict() for k, v in full.metrics.items()
                                  if k in ceiling["metrics"]}
