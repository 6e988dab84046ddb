"""Which images a run makes and where they live: checkpoints x gate scales x layouts.

Scale 0 (no adapter) is shared by every checkpoint; each checkpoint's images go to a cache folder
named by the full recipe (base hashes, sampler, seed, the adapter's forward and CFG treatment), so
a rerun makes only what is missing and never mixes recipes; under torchrun each rank makes its
shard. Every adapter is attached once before anything is generated, so a misfit fails first;
that load is the one its generation uses (LoadedAdapters: detached after the check, attached
again for its images), so each adapter is loaded once.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from gatebench.adapters.types import CheckpointInfo
from gatebench.checkpoint import load_adapter
from gatebench.errors import CheckpointError
from gatebench.generate import (
    GenerationStats,
    ImageJob,
    Sampler,
    SamplerSettings,
    layout_seed,
    resolve_uncond,
)
from gatebench.image_cache import ImageCache, KeptImages
from gatebench.layouts import Layout
from gatebench.metrics.health_prefetch import HealthPrefetch
from gatebench.metrics.timing import StageTimer, phase
from gatebench.protocol import Protocol
from gatebench.score import ImageItem

if TYPE_CHECKING:
    from gatebench.adapters.registry import AdapterRuntime
    from gatebench.models.base import BaseModel


def sampler_settings(protocol: Protocol, base: BaseModel) -> SamplerSettings:
    g = protocol.generation
    height, width = base.default_size
    return SamplerSettings(steps=g.steps, guidance_scale=g.guidance_scale, scheduler=g.scheduler,
                           grounding_fraction=g.grounding_fraction, uncond_boxes=g.uncond_boxes,
                           height=g.height or height, width=g.width or width,
                           max_boxes=protocol.data.max_boxes, phrase_max_length=g.phrase_max_length)


def generate_all(base: BaseModel, sampler: Sampler, infos: Sequence[CheckpointInfo],
                 layouts: Sequence[Layout], protocol: Protocol, *, root: Path, batch: int,
                 progress: Callable[[int], None] | None = None, shard: tuple[int, int] = (0, 1),
                 keep: KeptImages | None = None, adapters: LoadedAdapters | None = None,
                 health: HealthPrefetch | None = None, timer: StageTimer | None = None
                 ) -> tuple[dict[tuple[str, float], list[ImageItem]], GenerationStats, list[dict]]:
    """Images for every checkpoint x gate scale; scale 0 (no adapter) is shared by all.

    With ``shard=(rank, world)`` this process generates only layouts ``i % world == rank``; the
    returned items still name every image (paths are a pure function of the recipe), so the
    scorer sees the whole set once all ranks are done. ``keep``: the images made here stay in
    memory and the items carry them (``image``, ``reference_image``): scoring reads no PNG
    back. ``adapters``: the preflight's loads (preflight_adapters), reused. ``health``: each
    image kept starts its image health on a background thread (``prefetch_health``).
    ``timer``: charged the adapters' loads (``adapter_load``); the sampler's own phases are in
    the returned GenerationStats.
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
    zero_path = {job.layout.layout_id: job.path for job in zero_jobs}
    with prefetch_health(keep, health, {}):
        sampler.run(mine(zero_jobs), None, batch_size=batch, stats=stats, on_batch=progress,
                    keep=keep)
    kept = keep.get if keep is not None else (lambda _path: None)
    items: dict[tuple[str, float], list[ImageItem]] = {}
    caches = [{"adapter": None, "folder": str(base_cache.folder), "recipe_sha256": base_cache.hash}]
    for info in infos:
        items[(info.sha256, 0.0)] = [ImageItem(zero_path[lay.layout_id], lay, 0.0, None,
                                               image=kept(zero_path[lay.layout_id]))
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
            with phase(timer, "adapter_load"):
                adapter = adapters.take(info, base) if adapters is not None else \
                    load_adapter(info.path, base, info)
            caches[-1]["phrase_encoding"] = adapter.phrase_encoding
            twins = {j.path: zero_path[j.layout.layout_id] for j in jobs}
            try:
                with prefetch_health(keep, health, twins):
                    sampler.run(mine(jobs), adapter, batch_size=batch, stats=stats,
                                on_batch=progress, keep=keep)
            finally:
                adapter.remove()
        for s in scales:
            if s != 0.0:
                items[(info.sha256, s)] = [
                    ImageItem(j.path, j.layout, s, zero_path[j.layout.layout_id],
                              image=kept(j.path),
                              reference_image=kept(zero_path[j.layout.layout_id]))
                    for j in jobs if j.gate_scale == s]
    return items, stats, caches


@contextmanager
def prefetch_health(keep: KeptImages | None, health: HealthPrefetch | None,
                    twins: Mapping[Path, Path]) -> Iterator[None]:
    """While the sampler runs, each image it keeps in memory starts its image health on
    ``health``'s thread, against its gate-0 twin (``twins``: image -> twin path; absent: none).
    An image whose twin is not in memory is left to the score stage, which reads the twin."""
    if keep is None or health is None:
        yield
        return

    def start(path: Path, image: Any) -> None:
        twin = twins.get(path)
        reference = keep.get(twin) if twin is not None else None
        if twin is None or reference is not None:
            health.submit(str(path), image, reference, str(twin) if twin is not None else None)

    keep.on_keep = start
    try:
        yield
    finally:
        keep.on_keep = None


KEEP_ADAPTERS_BYTES = 1 << 30    # LoadedAdapters' default: 1 GiB of adapter tensors kept


def _held_bytes(runtime: AdapterRuntime, base: BaseModel) -> int:
    """Bytes of the tensors a (detached) runtime holds beyond the base model's own: its adapter
    modules, or a GLIGEN runtime's gated UNet copy."""
    import torch  # noqa: PLC0415

    own = {id(t) for t in base.unet.parameters()} | {id(t) for t in base.unet.buffers()}
    held: dict[int, int] = {}
    for value in vars(runtime).values():
        if isinstance(value, torch.nn.Module):
            for t in [*value.parameters(), *value.buffers()]:
                if id(t) not in own:
                    held[id(t)] = t.numel() * t.element_size()
    return sum(held.values())


class LoadedAdapters:
    """Every checkpoint's adapter loaded once, by the preflight, and reused for its images.

    The preflight loads (attaches) each adapter against the base, so a misfit fails before any
    image; it then detaches it and keeps it here; ``take`` attaches the same runtime again for
    its own images. A runtime whose own tensors do not fit in what is left of ``max_bytes`` (a
    GLIGEN runtime holds a whole gated UNet copy), or whose family has no ``attach``, is let go
    after its check and loaded again when its turn comes: memory before load time."""

    def __init__(self, max_bytes: int = KEEP_ADAPTERS_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.loads = 0          # load_adapter calls (preflight + generation)
        self.reused = 0
        self._kept: dict[str, AdapterRuntime] = {}

    def check(self, info: CheckpointInfo, base: BaseModel) -> None:
        """Load ``info``'s adapter (the preflight check), detach it, keep it if it fits."""
        runtime = self._load(info, base)
        runtime.remove()
        size = _held_bytes(runtime, base)
        if callable(getattr(runtime, "attach", None)) and self.bytes + size <= self.max_bytes \
                and str(info.path) not in self._kept:
            self._kept[str(info.path)] = runtime
            self.bytes += size

    def take(self, info: CheckpointInfo, base: BaseModel) -> AdapterRuntime:
        """``info``'s adapter attached to ``base``: the preflight's when kept, else a new load."""
        runtime = self._kept.pop(str(info.path), None)
        if runtime is None:
            return self._load(info, base)
        self.reused += 1
        runtime.attach()
        return runtime

    def _load(self, info: CheckpointInfo, base: BaseModel) -> AdapterRuntime:
        self.loads += 1
        try:
            return load_adapter(info.path, base, info)
        except CheckpointError as exc:
            if exc.path is not None:
                raise
            raise CheckpointError(exc.message, path=info.path, hint=exc.hint) from None


def preflight_adapters(base: BaseModel, infos: Sequence[CheckpointInfo], *,
                       max_bytes: int = KEEP_ADAPTERS_BYTES) -> LoadedAdapters:
    """Attach and detach every adapter once before generating: widths, phrase width, missing
    ``to_out`` and shapes that do not fit their keys fail now, not after the base images. The
    loaded adapters are returned for generate_all to reuse (LoadedAdapters)."""
    loaded = LoadedAdapters(max_bytes)
    for info in infos:
        loaded.check(info, base)
    return loaded
