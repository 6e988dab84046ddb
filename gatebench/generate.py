"""Batched, paired, resumable generation at every gate scale.

Why it looks like this (generation is >95% of an evaluation's cost):

* batches hold DIFFERENT layouts (and gate scales), padded to the batch's box count with a mask;
* each layout's initial noise comes from its own seed, derived from (protocol seed, layout id), so
  an image does not depend on batch size, order or process, and every gate scale of a layout
  starts from the SAME noise (paired comparisons);
* prompt and phrase encodings are computed once per layout and reused across scales/checkpoints;
* scale 0 runs with no adapter at all: it IS the base model's output, shared by all checkpoints;
* images are cached on disk under a recipe hash (image_cache.py); a rerun generates only what
  is missing;
* the images just made can stay in memory (image_cache.KeptImages) so that the score stage does not read back
  the PNGs it was handed (each is still written, atomically, for the record and the cache).
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import numpy as np
import torch

from gatebench.adapters.user import Grounding
from gatebench.adapters.write_meter import WriteMeter
from gatebench.errors import ProtocolError
from gatebench.image_cache import KeptImages, png_problem, write_png
from gatebench.layouts import Layout
from gatebench.protocol import UNCOND_ALIASES, UNCOND_TREATMENTS
from gatebench.writes.records import sidecar, write_sidecars

if TYPE_CHECKING:
    from gatebench.adapters.registry import AdapterRuntime, OwnPhraseRuntime
    from gatebench.models.base import BaseModel, PromptEmbeddings

_log = logging.getLogger(__name__)

# Schedulers whose step() draws no noise: a batch's images then depend only on their own seeds.
DETERMINISTIC_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                            "UniPCMultistepScheduler", "PNDMScheduler", "HeunDiscreteScheduler",
                            "LMSDiscreteScheduler", "DEISMultistepScheduler")


# What the unconditional half of classifier-free guidance gets:
#   grounded  the same boxes, phrases and gate scale as the conditional half (the user's inference)
#   null      the same boxes with mask 0 (null objects), adapter active (diffusers' GLIGEN pipeline)
#   off       no adapter at all (what `gatebench train --uncond-boxes off` trains for)
#   reference what the checkpoint was made for (CheckpointInfo.reference_uncond)


def resolve_uncond(setting: str, reference: str) -> str:
    """The CFG treatment one adapter gets; ``reference`` is its CheckpointInfo.reference_uncond."""
    setting = UNCOND_ALIASES.get(setting, setting)
    return reference if setting == "reference" else setting


def grounded_steps(fraction: float, steps: int) -> int:
    """Scheduled sampling: the adapter runs for the first int(fraction * steps) steps, as
    diffusers' GLIGEN pipeline counts ``num_grounding_steps``."""
    return int(fraction * steps)


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    guidance_scale: float
    scheduler: str
    grounding_fraction: float
    uncond_boxes: str
    height: int
    width: int
    max_boxes: int = 30
    phrase_max_length: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "uncond_boxes", UNCOND_ALIASES.get(self.uncond_boxes,
                                                                    self.uncond_boxes))
        if self.uncond_boxes not in UNCOND_TREATMENTS:
            raise ProtocolError(f"expected uncond_boxes in {', '.join(UNCOND_TREATMENTS)}, got "
                                f"{self.uncond_boxes!r}", hint="set [generation] uncond_boxes")
        if self.scheduler not in DETERMINISTIC_SCHEDULERS:
            raise ProtocolError(f"expected a deterministic scheduler ({', '.join(DETERMINISTIC_SCHEDULERS)}),"
                                f" got {self.scheduler!r}", hint="set [generation] scheduler")
        if not 0.0 <= self.grounding_fraction <= 1.0:
            raise ProtocolError(f"expected grounding_fraction in [0, 1], got {self.grounding_fraction}")
        if self.steps < 1:
            raise ProtocolError(f"expected steps >= 1, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layout_seed(seed: int, layout_id: str) -> int:
    """A layout's own seed: independent of batch, order and process."""
    digest = hashlib.sha256(f"{seed}/{layout_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _timed_write_png(path: Path, image: np.ndarray, meta: dict[str, Any],
                     writes: tuple[dict[str, Any], np.ndarray] | None = None) -> float:
    """The image's write diagnostics first, then the PNG: a cached PNG has its sidecars."""
    began = time.perf_counter()
    if writes is not None:
        write_sidecars(path, *writes)
    write_png(path, image, meta)
    return time.perf_counter() - began


def is_cached(path: Path, width: int, height: int) -> bool:
    """True when ``path`` holds a usable cached image. A PNG there that does not decode (zero
    bytes, truncated, another size) is deleted with its write sidecar and a one-line warning,
    so that it is generated again: never used, never a crash."""
    if not path.exists():
        return False
    problem = png_problem(path, width, height)
    if problem is None:
        return True
    _log.warning("regenerating cached image %s (%s)", path, problem)
    for stale in (path, sidecar(path)):
        stale.unlink(missing_ok=True)
    return False


def _write_diagnostics(meter: WriteMeter, grounding: Grounding, jobs: Sequence[ImageJob],
                       cfg: bool) -> list[tuple[dict[str, Any], np.ndarray] | None]:
    """One (record, map) per job from the conditional rows; the one host sync of the meter."""
    rows = [len(jobs) + i if cfg else i for i in range(len(jobs))]
    records = meter.results(rows, grounding.mask)
    maps = meter.maps(rows).numpy()
    return [None if job.gate_scale == 0 else (record, density)
            for job, record, density in zip(jobs, records, maps, strict=True)]


def _sync(device: Any) -> None:
    """Wait for queued CUDA work (only where a phase's time is measured)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class ImageJob:
    layout: Layout
    gate_scale: float
    seed: int
    path: Path


@dataclass
class GenerationStats:
    """Counts and timings of Sampler.run calls (summed over calls that share one instance).

    ``seconds`` is the time inside Sampler.sample of the batches that succeeded; it splits into
    ``encode_s`` (prompt + phrase encoding of layouts not encoded yet), ``unet_s`` (noise,
    scheduler and grounding set-up + the denoising loop) and ``decode_s`` (VAE decode / pixel
    conversion, copy to CPU, finite check). ``write_wait_s`` is the main thread's own time on PNG
    output (uint8 conversion, queueing, waiting for unfinished writes at the end); ``png_write_s``
    is the writer threads' time, which overlaps generation. On CUDA the phases end with a
    ``torch.cuda.synchronize`` so that each is charged its own GPU time.
    """

    generated: int = 0
    cached: int = 0
    nonfinite: int = 0
    seconds: float = 0.0
    batches: int = 0
    oom_halvings: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    encode_s: float = 0.0
    unet_s: float = 0.0
    decode_s: float = 0.0
    write_wait_s: float = 0.0
    png_write_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "batch_sizes"} | {
            "s_per_image": self.seconds / self.generated if self.generated else None}


class Sampler:
    """Owns the base model's encodings and runs batches of ImageJobs."""

    def __init__(self, base: BaseModel, settings: SamplerSettings) -> None:
        self.base = base
        self.settings = settings
        self._prompts: dict[str, PromptEmbeddings] = {}
        self._phrases: dict[tuple[str, str], torch.Tensor] = {}   # (encoder key, layout id)
        self._uncond: PromptEmbeddings | None = None

    def encode(self, layouts: Sequence[Layout], chunk: int = 64) -> None:
        """Prompt and phrase encodings, once per layout (reused across scales and checkpoints)."""
        todo = [lay for lay in dict.fromkeys(layouts) if lay.layout_id not in self._prompts]
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            emb = self.base.encode_prompts([lay.caption for lay in part])
            for i, lay in enumerate(part):
                self._prompts[lay.layout_id] = emb.index([i])
            names = [obj.name for lay in part for obj in lay.objects[: self.settings.max_boxes]]
            vectors = self.base.encode_phrases(names, max_length=self.settings.phrase_max_length) \
                if names else torch.zeros(0, self.base.phrase_dim)
            offset = 0
            for lay in part:
                n = min(len(lay.objects), self.settings.max_boxes)
                self._phrases[("base", lay.layout_id)] = vectors[offset:offset + n]
                offset += n
        if self._uncond is None:
            self._uncond = self.base.encode_negative()

    def _phrase_key(self, layouts: Sequence[Layout], adapter: AdapterRuntime) -> str:
        """Adapter families that encode phrases their own way (GLIGEN: pooler output) get their
        own cached vectors; the user family uses the base model's mean-pooled encoding."""
        key = adapter.phrase_key
        if key == "base":
            return key
        own = cast("OwnPhraseRuntime", adapter)     # a phrase_key other than "base" promises it
        todo = [lay for lay in dict.fromkeys(layouts) if (key, lay.layout_id) not in self._phrases]
        for lay in todo:
            names = [obj.name for obj in lay.objects[: self.settings.max_boxes]]
            self._phrases[(key, lay.layout_id)] = own.encode_phrases(names) if names else \
                torch.zeros(0, 1)
        return key

    def _grounding(self, jobs: Sequence[ImageJob], cfg: bool, key: str = "base",
                   uncond: str = "grounded", slots: int | None = None) -> Grounding:
        """Boxes padded with mask 0: to the batch's maximum, or to ``slots`` for families whose
        null slots take part in the attention (GLIGEN: always 30, else an image would depend on
        the other layouts in its batch)."""
        counts = [min(len(j.layout.objects), self.settings.max_boxes, slots or 1 << 30)
                  for j in jobs]
        n = slots or max(1, max(counts))
        b = len(jobs)
        boxes = torch.zeros(b, n, 4)
        dim = max(self._phrases[(key, j.layout.layout_id)].shape[-1] for j in jobs)
        phrases = torch.zeros(b, n, dim if dim > 1 else self.base.phrase_dim)
        mask = torch.zeros(b, n)
        for row, (job, count) in enumerate(zip(jobs, counts, strict=True)):
            if count:
                objects = job.layout.objects[:count]
                boxes[row, :count] = torch.tensor([o.bbox for o in objects])
                phrases[row, :count] = self._phrases[(key, job.layout.layout_id)][:count].float()
                mask[row, :count] = 1.0
        scale = torch.tensor([j.gate_scale for j in jobs])
        if cfg:
            boxes, phrases = torch.cat([boxes, boxes]), torch.cat([phrases, phrases])
            mask = torch.cat([mask if uncond == "grounded" else torch.zeros_like(mask), mask])
            scale = torch.cat([torch.zeros_like(scale) if uncond == "off" else scale, scale])
        device = self.base.device
        return Grounding(boxes.to(device), phrases.to(device), mask.to(device), scale.to(device),
                         aspect=self.settings.height / self.settings.width)

    @torch.no_grad()
    def sample(self, jobs: Sequence[ImageJob], adapter: AdapterRuntime | None, *,
               timings: dict[str, float] | None = None,
               diagnostics: list[tuple[dict[str, Any], np.ndarray] | None] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one batch; return (images in [0,1] on CPU, per-image finite flags).

        ``timings``: when given, ``encode_s``, ``unet_s`` and ``decode_s`` of this batch are added
        to it (see GenerationStats). ``diagnostics``: when given (and an adapter is on), one
        (write record, write map) per job is appended, measured by a WriteMeter on this very
        sampling (conditional CFG half; None for a job at gate scale 0).
        """
        s, base = self.settings, self.base
        clock = time.perf_counter() if timings is not None else 0.0

        def lap(name: str) -> None:
            nonlocal clock
            if timings is not None:
                _sync(base.device)
                now = time.perf_counter()
                timings[name] = timings.get(name, 0.0) + now - clock
                clock = now

        self.encode([j.layout for j in jobs])
        lap("encode_s")
        assert self._uncond is not None      # encode() sets it
        cond = self._prompts[jobs[0].layout.layout_id]
        for job in jobs[1:]:
            cond = cond.cat(self._prompts[job.layout.layout_id])
        cfg = s.guidance_scale > 1.0
        emb = self._uncond.index([0] * len(jobs)).cat(cond) if cfg else cond
        shape = base.latent_shape(s.height, s.width)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(j.seed))
                             for j in jobs])
        scheduler = base.make_scheduler(s.scheduler)
        scheduler.set_timesteps(s.steps, device=base.device)
        x = noise.to(base.device, base.dtype) * scheduler.init_noise_sigma
        kwargs = base.unet_kwargs(emb, s.height, s.width)
        grounding = None
        if adapter is not None:
            key = self._phrase_key([j.layout for j in jobs], adapter)
            grounding = self._grounding(jobs, cfg, key, resolve_uncond(s.uncond_boxes,
                                                                      adapter.info.reference_uncond),
                                        adapter.fixed_slots)
        active_steps = grounded_steps(s.grounding_fraction, s.steps)
        meter = None
        if diagnostics is not None and grounding is not None:
            meter = WriteMeter(grounding.boxes.shape[0], grounding.boxes.shape[1], base.device)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            active = grounding if i < active_steps else None
            if meter is not None:
                meter.phase = int(i >= active_steps / 2)          # early / late grounded steps
            with adapter.grounded(active) if adapter is not None else nullcontext(), \
                    adapter.measuring(meter) if meter is not None and adapter is not None \
                    else nullcontext():
                pred = base.unet(model_in, t, encoder_hidden_states=emb.hidden, **kwargs).sample
            if cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + s.guidance_scale * (text - uncond)
            x = scheduler.step(pred, t, x).prev_sample
        lap("unet_s")
        if meter is not None and grounding is not None and diagnostics is not None:
            diagnostics.extend(_write_diagnostics(meter, grounding, jobs, cfg))
        images = base.decode(x).float().cpu()
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        images = torch.nan_to_num(images, nan=0.0).clamp(0, 1)
        lap("decode_s")
        return images, finite

    def run(self, jobs: Sequence[ImageJob], adapter: AdapterRuntime | None, *, batch_size: int,
            stats: GenerationStats | None = None,
            on_batch: Callable[[int], None] | None = None,
            keep: KeptImages | None = None) -> GenerationStats:
        """Generate every job whose image is not on disk yet; PNG writes overlap generation.

        ``keep``: the new images also go there (in memory, for the score stage)."""
        stats = stats or GenerationStats()
        pending = [j for j in jobs if not is_cached(j.path, self.settings.width,
                                                     self.settings.height)]
        stats.cached += len(jobs) - len(pending)
        if stats.cached and on_batch:
            on_batch(len(jobs) - len(pending))
        writes: list[Future] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            start = 0
            while start < len(pending):
                batch = pending[start:start + batch_size]
                began = time.perf_counter()
                timings: dict[str, float] = {}
                try:
                    diagnostics: list = []
                    images, finite = self.sample(
                        batch, adapter, timings=timings,
                        diagnostics=diagnostics if adapter is not None else None)
                except torch.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    batch_size = max(1, batch_size // 2)
                    stats.oom_halvings += 1
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                stats.seconds += time.perf_counter() - began
                for name, value in timings.items():
                    setattr(stats, name, getattr(stats, name) + value)
                stats.batches += 1
                stats.batch_sizes.append(len(batch))
                began = time.perf_counter()
                arrays = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                arrays.flags.writeable = False      # shared by the PNG writer and the scorer
                for k, (job, array, ok) in enumerate(zip(batch, arrays, finite.tolist(),
                                                         strict=True)):
                    if keep is not None:
                        keep.put(job.path, array)
                    meta = {"layout_id": job.layout.layout_id, "gate_scale": job.gate_scale,
                            "seed": job.seed, "nonfinite": not ok}
                    writes.append(pool.submit(_timed_write_png, job.path, array, meta,
                                              diagnostics[k] if diagnostics else None))
                    stats.nonfinite += int(not ok)
                stats.write_wait_s += time.perf_counter() - began
                stats.generated += len(batch)
                start += len(batch)
                if on_batch:
                    on_batch(len(batch))
            began = time.perf_counter()
            for future in writes:
                stats.png_write_s += future.result()
            stats.write_wait_s += time.perf_counter() - began
        return stats
