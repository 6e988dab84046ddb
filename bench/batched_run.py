"""gatebench's own batched path, timed: the calls `gatebench run` makes, in its order.

``preflight_adapters`` -> ``plan.generate_all`` (images kept in memory, each one's image health
started on a thread while the next batch samples) -> ``score_run.score_sets`` (from memory, one
twin cache). Nothing here re-implements a stage: the split of the time comes from the library's
own records (GenerationStats for the sampler's encode / UNet / decode / PNG phases) and a
StageTimer handed to generate_all and score_sets (metrics/timing.py names its phases).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.generation_world import World
from bench.loop_reference import ImageKey, loop_one
from bench.timing import device_sync
from gatebench.checkpoint import load_adapter
from gatebench.generate import ImageJob, Sampler, layout_seed
from gatebench.image_cache import KeptImages
from gatebench.metrics.health_prefetch import HealthPrefetch
from gatebench.metrics.timing import StageTimer
from gatebench.metrics.twin_cache import TwinCache
from gatebench.plan import generate_all, preflight_adapters
from gatebench.score_run import score_sets


def run_batched(world: World, root: Path, batch_size: int, *, score: bool = True
                ) -> dict[str, Any]:
    """One run of the pipeline into ``root``. ``score=False``: generation alone (no images
    kept, no health prefetch). ``generate_s`` spans the adapter's preflight load and
    generate_all; ``score_s`` spans score_sets. ``paths``: (layout id, scale) -> PNG."""
    root.mkdir(parents=True, exist_ok=True)
    protocol, infos = world.protocol, [world.info]
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    sync = device_sync(world.device)
    timer = StageTimer(sync=sync)
    keep = KeptImages() if score else None
    scoring = protocol.scoring
    with HealthPrefetch(garbled_threshold=scoring.garbled_threshold,
                        blank_threshold=scoring.blank_threshold, twin_cache=TwinCache()) as health:
        sync()
        t0 = time.perf_counter()
        adapters = preflight_adapters(world.base, infos)
        preflight_s = time.perf_counter() - t0
        sampler = Sampler(world.base, world.settings)           # a fresh run: nothing encoded yet
        items, stats, _ = generate_all(world.base, sampler, infos, world.layouts, protocol,
                                       root=root, batch=batch_size, keep=keep, adapters=adapters,
                                       health=health if score else None, timer=timer)
        sync()
        generate_s = time.perf_counter() - t0
        paths: dict[ImageKey, Path] = {(it.layout.layout_id, s): it.image_path
                                       for s in scales for it in items[(world.info.sha256, s)]}
        out: dict[str, Any] = {
            "images": stats.generated, "batch_size": batch_size, "generate_s": generate_s,
            "adapter_load_s": preflight_s + timer.seconds.get("adapter_load", 0.0),
            "adapter_loads": adapters.loads, "generation": stats.to_dict(),
            "health_prefetched": len(health), "paths": paths}
        if not score:
            return out
        scorer = StageTimer(sync=sync)
        t0 = time.perf_counter()
        _, rows = score_sets(items, infos, scales, protocol, world.eval_models, root / "cache",
                             health=health, timer=scorer)
        sync()
        score_s = time.perf_counter() - t0
    out.update(score_s=score_s, score_phases=dict(scorer.seconds),
               score_phase_calls=dict(scorer.calls), total_s=generate_s + score_s,
               metrics_computed={f"{row['gate_scale']:g}": sorted(row["metrics"])
                                 for row in rows})
    return out


def warm_up(world: World, folder: Path) -> None:
    """One short run of both paths through every model (1 step, 2 layouts), so no timed path
    pays first-call costs (cuDNN, the allocator, imports, the file-hash cache)."""
    quick = replace(world, settings=replace(world.settings, steps=1), layouts=world.layouts[:2])
    run_batched(quick, folder / "batched", 2)
    adapter = load_adapter(world.ckpt, world.base, world.info)
    try:
        job = ImageJob(quick.layouts[0], 1.0, 1, folder / "loop.png")
        loop_one(quick, adapter, job, StageTimer(sync=device_sync(world.device)))
    finally:
        adapter.remove()


def diagnostics_cost(world: World, batch_size: int, reps: int) -> dict[str, Any]:
    """Where the adapter writes (issue 20) rides on every adapter batch: one batch of the
    adapter's jobs sampled with and without the WriteMeter, interleaved, best of ``reps``."""
    jobs = [ImageJob(lay, 1.0, layout_seed(world.protocol.seed, lay.layout_id), Path("-"))
            for lay in world.layouts[:batch_size]]
    sampler = Sampler(world.base, world.settings)
    adapter = load_adapter(world.ckpt, world.base, world.info)
    times: dict[str, list[float]] = {"plain_s": [], "measured_s": []}
    try:
        for _ in range(reps):
            for name, out in (("plain_s", None), ("measured_s", [])):
                began = time.perf_counter()
                sampler.sample(jobs, adapter, diagnostics=out)
                times[name].append(time.perf_counter() - began)
    finally:
        adapter.remove()
    best = {k: float(np.min(v)) for k, v in times.items()}
    return {**best, "images": len(jobs), "repeats": reps,
            "measured_over_plain": best["measured_s"] / best["plain_s"]}
