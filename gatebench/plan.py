"""Which images a run makes and where they live: checkpoints x gate scales x layouts.

Scale 0 (no adapter) is shared by every checkpoint; each checkpoint's images go to a cache folder
named by the full recipe (base hashes, sampler, seed, the adapter's forward and CFG treatment), so
a rerun makes only what is missing and never mixes recipes; under torchrun each rank makes its
shard. Every adapter is attached once before anything is generated, so a misfit fails first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from gatebench.adapters.types import CheckpointInfo
from gatebench.checkpoint import load_adapter
from gatebench.errors import CheckpointError
from gatebench.generate import (GenerationStats, ImageCache, ImageJob, Sampler, SamplerSettings,
                                layout_seed, resolve_uncond)
from gatebench.layouts import Layout
from gatebench.protocol import Protocol
from gatebench.score import ImageItem


def sampler_settings(protocol: Protocol, base: Any) -> SamplerSettings:
    g = protocol.generation
    height, width = base.default_size
    return SamplerSettings(steps=g.steps, guidance_scale=g.guidance_scale, scheduler=g.scheduler,
                           grounding_fraction=g.grounding_fraction, uncond_boxes=g.uncond_boxes,
                           height=g.height or height, width=g.width or width,
                           max_boxes=protocol.data.max_boxes, phrase_max_length=g.phrase_max_length)


def generate_all(base: Any, sampler: Sampler, infos: Sequence[CheckpointInfo],
                 layouts: Sequence[Layout], protocol: Protocol, *, root: Path, batch: int,
                 progress: Callable[[int], None] | None = None, shard: tuple[int, int] = (0, 1)
                 ) -> tuple[dict[tuple[str, float], list[ImageItem]], GenerationStats, list[dict]]:
    """Images for every checkpoint x gate scale; scale 0 (no adapter) is shared by all.

    With ``shard=(rank, world)`` this process generates only layouts ``i % world == rank``; the
    returned items still name every image (paths are a pure function of the recipe), so the
    scorer sees the whole set once all ranks are done.
    """
    rank, world = shard
    position = {lay.layout_id: i for i, lay in enumerate(layouts)}
    mine = lambda jobs: [j for j in jobs if position[j.layout.layout_id] % world == rank]  # noqa: E731
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    stats = GenerationStats()
    identity = base.identity()
    # recipe 2: the adapter families follow their references (user forward, GLIGEN pipeline)
    common = {"base": identity, "sampler": sampler.settings.to_dict(), "seed": protocol.seed,
              "gatebench_recipe": 2}
    base_cache = ImageCache(root, "base", {**common, "adapter": None})
    zero_jobs = [ImageJob(lay, 0.0, layout_seed(protocol.seed, lay.layout_id),
                          base_cache.path_for(lay.layout_id, 0.0)) for lay in layouts]
    sampler.run(mine(zero_jobs), None, batch_size=batch, stats=stats, on_batch=progress)
    zero_path = {job.layout.layout_id: job.path for job in zero_jobs}
    items: dict[tuple[str, float], list[ImageItem]] = {}
    caches = [{"adapter": None, "folder": str(base_cache.folder), "recipe_sha256": base_cache.hash}]
    for info in infos:
        items[(info.sha256, 0.0)] = [ImageItem(zero_path[lay.layout_id], lay, 0.0, None)
                                     for lay in layouts]
        uncond = resolve_uncond(sampler.settings.uncond_boxes, info.reference_uncond)
        cache = ImageCache(root, info.path.stem, {**common, "adapter": {
            "sha256": info.sha256, "family": info.family, "forward": dict(info.adapter_config),
            "uncond": uncond}})
        caches.append({"adapter": str(info.path), "folder": str(cache.folder),
                       "recipe_sha256": cache.hash, "uncond_boxes": uncond,
                       "reference": info.adapter_config.get("reference")})
        jobs = [ImageJob(lay, s, layout_seed(protocol.seed, lay.layout_id),
                         cache.path_for(lay.layout_id, s)) for s in scales if s != 0.0
                for lay in layouts]
        if jobs:
            adapter = load_adapter(info.path, base, info)
            caches[-1]["phrase_encoding"] = getattr(adapter, "phrase_encoding", base.phrase_encoding)
            try:
                sampler.run(mine(jobs), adapter, batch_size=batch, stats=stats, on_batch=progress)
            finally:
                adapter.remove()
        for s in scales:
            if s != 0.0:
                items[(info.sha256, s)] = [
                    ImageItem(j.path, j.layout, s, zero_path[j.layout.layout_id])
                    for j in jobs if j.gate_scale == s]
    return items, stats, caches


def preflight_adapters(base: Any, infos: Sequence[CheckpointInfo]) -> None:
    """Attach and detach every adapter once before generating: widths, phrase width, missing
    ``to_out`` and shapes that do not fit their keys fail now, not after the base images."""
    for info in infos:
        try:
            load_adapter(info.path, base, info).remove()
        except CheckpointError as exc:
            if exc.path is not None:
                raise
            raise CheckpointError(exc.message, path=info.path, hint=exc.hint) from None
