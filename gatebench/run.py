"""`gatebench run`: checkpoint(s) -> gates -> generation at every gate scale -> scores -> verdict.

Everything a number depends on is recorded in results.json (protocol, seed, N, versions, hashes,
timings), every per-image record goes to samples.jsonl, so every aggregate can be recomputed.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from gatebench import __version__
from gatebench.adapters.registry import load_adapter
from gatebench.checkpoint import CheckpointInfo, inspect_checkpoint
from gatebench.files import file_sha256
from gatebench.distributed import (barrier, distributed, import_collective_libraries,
                                   sum_over_ranks)
from gatebench.errors import CheckpointError, GatebenchError, ModelFileError
from gatebench.rundir.outputs import ensure_out_dir
from gatebench.gates import GateReport, analyse
from gatebench.generate import (GenerationStats, ImageCache, ImageJob, Sampler, SamplerSettings,
                                grounded_steps, layout_seed, read_png_meta, resolve_uncond)
from gatebench.layouts import Layout, load_layouts
from gatebench.protocol import Protocol
from gatebench.rundir.saved import checkpoint_labels
from gatebench.score import ImageItem, score_images, write_samples_jsonl
from gatebench.verdict import TargetRow, evaluate_targets

SCHEMA_VERSION = 2   # 2 (gatebench 0.2): forward configs, references, per-adapter uncond_boxes
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "torchmetrics",
            "ultralytics", "numpy", "pandas", "scipy", "faster-coco-eval")


@dataclass(frozen=True)
class RunOptions:
    """CLI-level choices that are not part of the protocol (they do not change the numbers)."""

    out_dir: Path
    device: str = "auto"
    batch_size: int | None = None
    command: str = ""


@dataclass
class RunResult:
    results: dict[str, Any]
    samples: pd.DataFrame
    targets: list[TargetRow]
    gate_report: GateReport
    out_dir: Path
    exit_code: int
    paths: dict[str, Path] = field(default_factory=dict)


def _sum_over_ranks(stats: GenerationStats) -> None:
    """The run's generation counts are the sum of every rank's."""
    counts = ("generated", "cached", "nonfinite", "batches", "oom_halvings")
    seconds = ("seconds", "encode_s", "unet_s", "decode_s", "write_wait_s", "png_write_s")
    sum_over_ranks(stats, counts, seconds)


def resolve_device(device: str) -> str:
    from gatebench.readers.protocol_values import DEVICE
    if not DEVICE.match(device):
        raise GatebenchError(f"expected --device auto, cpu, mps, cuda or cuda:N, got {device!r}",
                             hint="use --device cpu or cuda")
    if device == "auto":
        import os
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GatebenchError(f"expected a CUDA device for --device {device}, got none available",
                             hint="use --device cpu")
    return device


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if device == "cpu" and name != "fp32":
        return torch.float32  # CPU half precision is slow and inexact: fp32 there, recorded
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "gatebench": __version__}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def select_layouts(protocol: Protocol) -> tuple[list[Layout], dict[str, Any]]:
    """The protocol's layouts: the first ``num_samples`` in file order (documented, stable)."""
    d = protocol.data
    if not d.layouts:
        raise ModelFileError("expected [data] layouts in the protocol, got none",
                             path=protocol.source, hint="set it or pass --layouts FILE")
    report = load_layouts(d.layouts, d.format, min_area=d.min_area, max_area=d.max_area,
                          min_side=d.min_side, max_boxes=d.max_boxes,
                          captions=d.coco_captions, zh_captions=d.zh_captions,
                          caption_language=d.caption_language)
    layouts = [lay for lay in report.layouts if lay.objects]
    if protocol.num_samples is not None:
        layouts = layouts[: protocol.num_samples]
    if not layouts:
        raise GatebenchError("expected at least one layout with boxes, got none", path=d.layouts)
    return layouts, report.summary()


def sampler_settings(protocol: Protocol, base: Any) -> SamplerSettings:
    g = protocol.generation
    height, width = base.default_size
    return SamplerSettings(steps=g.steps, guidance_scale=g.guidance_scale, scheduler=g.scheduler,
                           grounding_fraction=g.grounding_fraction, uncond_boxes=g.uncond_boxes,
                           height=g.height or height, width=g.width or width,
                           max_boxes=protocol.data.max_boxes, phrase_max_length=g.phrase_max_length)


def generate_all(base: Any, sampler: Sampler, infos: Sequence[CheckpointInfo],
                 layouts: Sequence[Layout], protocol: Protocol, options: RunOptions,
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
    root = options.out_dir / "images"
    batch = options.batch_size or protocol.generation.batch_size
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


def nonfinite_count(items: Sequence[ImageItem]) -> int:
    return sum(bool(read_png_meta(item.image_path).get("nonfinite")) for item in items)


def write_json(path: Path, document: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def build_results(*, protocol: Protocol, infos: Sequence[CheckpointInfo], gate_report: GateReport,
                  rows: list[dict[str, Any]], targets: list[TargetRow], models: dict[str, Any],
                  layouts_info: dict[str, Any], n_layouts: int, timings: dict[str, Any],
                  generation: dict[str, Any], options: RunOptions, device: str,
                  ceiling: dict[str, Any] | None,
                  dtype: torch.dtype, layout_ids: Sequence[str]) -> dict[str, Any]:
    from gatebench.gates import to_json as gates_json
    import hashlib
    verdict = "fail" if any(not t.passed for t in targets) or gate_report.verdict == "fail" \
        else "pass"
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command,
        "seed": protocol.seed,
        "n_layouts": n_layouts,
        "layout_ids_sha256": hashlib.sha256("\n".join(layout_ids).encode()).hexdigest(),
        "protocol": _plain(dataclasses.asdict(protocol)),
        "protocol_sha256": file_sha256(Path(protocol.source)) if protocol.source and
        Path(protocol.source).is_file() else None,
        "versions": package_versions(),
        "device": device, "dtype": str(dtype).removeprefix("torch."),
        "models": models, "layouts": layouts_info,
        "checkpoints": [{**c, "gate_verdict": gate_report.verdict}
                        for c in gates_json(gate_report)["checkpoints"]],
        "gate_findings": [f.to_dict() for f in gate_report.findings],
        "results": rows,
        "real_images_ceiling": ceiling,
        "targets": [t.to_dict() for t in targets],
        "generation": generation,
        "timings": timings,
        "verdict": verdict,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run_evaluation(checkpoints: Sequence[Path], protocol: Protocol, options: RunOptions, *,
                   eval_models: Any = None, base: Any = None,
                   progress_factory: Callable[[int], Any] | None = None) -> RunResult:
    """The whole `gatebench run` as a library call (the CLI only parses flags and renders)."""
    from gatebench.metrics.evalmodels import load_eval_models
    from gatebench.models import load_base_model

    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = ensure_out_dir(options.out_dir)
    infos = [inspect_checkpoint(p) for p in checkpoints]
    layouts, layouts_info = select_layouts(protocol)
    box_counts = [min(len(lay.objects), protocol.data.max_boxes) for lay in layouts]
    gate_report = analyse(infos, [], protocol.gates, protocol.generation.gate_scales, box_counts)
    if protocol.gates.fail_on_findings and gate_report.verdict == "fail":
        raise GatebenchError("gate pre-flight check failed and [gates] fail_on_findings is set: "
                             + "; ".join(f"{f.code} ({f.subject})" for f in gate_report.findings
                                         if f.severity == "fail"))
    rank, world = distributed()
    import_collective_libraries(protocol, world)     # every rank, before any other collective
    device = resolve_device(options.device if options.device != "auto" else protocol.generation.device)
    dtype = resolve_dtype(protocol.generation.dtype, device)
    t0 = time.perf_counter()
    if base is None:
        if not protocol.models.base_model:
            raise ModelFileError("expected [models] base_model (a local diffusers folder), got none",
                                 path=protocol.source)
        base = load_base_model(protocol.models.base_model, device=device, dtype=dtype)
    if rank == 0:   # only rank 0 scores; it loads the evaluation models up front to fail early
        eval_models = eval_models or load_eval_models(protocol, device=device, layouts=layouts)
    timings["load_s"] = time.perf_counter() - t0
    preflight_adapters(base, infos)
    sampler = Sampler(base, sampler_settings(protocol, base))
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    total = len(layouts) * (1 + len(infos) * (len(scales) - 1))
    t0 = time.perf_counter()
    bar = progress_factory(-(-total // world)) if progress_factory and rank == 0 else None
    try:
        items, gen_stats, caches = generate_all(base, sampler, infos, layouts, protocol, options,
                                                progress=bar.advance if bar else None,
                                                shard=(rank, world))
    finally:
        if bar:
            bar.close()
    if world > 1:
        _sum_over_ranks(gen_stats)
        barrier("the end of generation (every shard's images on disk)")
        if rank != 0:
            return RunResult({}, pd.DataFrame(), [], gate_report, out, 0)
    timings["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames, rows = [], []
    scored_zero: dict[str, Any] = {}
    labels = checkpoint_labels(info.path for info in infos)   # runA/final.pt vs runB/final.pt
    for info in infos:
        for s in scales:
            group = items[(info.sha256, s)]
            if s == 0.0 and "zero" in scored_zero:   # scale 0 is shared: score it once
                result = scored_zero["zero"]
            else:
                result = score_images(group, protocol, **eval_models.score_kwargs(),
                                      cache_dir=out / "cache")
                if s == 0.0:
                    scored_zero["zero"] = result
            frame = result.samples.copy()
            frame.insert(0, "checkpoint", labels[str(info.path)])
            frames.append(frame)
            rows.append({"checkpoint": str(info.path), "label": labels[str(info.path)],
                         "checkpoint_sha256": info.sha256,
                         "gate_scale": s, "n_images": len(group),
                         "nonfinite_images": nonfinite_count(group),
                         "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
                         "not_computed": dict(result.not_computed)})
    ceiling = None
    if eval_models.detector is not None and eval_models.real_images:
        real = score_images([ImageItem(path, lay) for lay, path in eval_models.real_images],
                            protocol, detector=eval_models.detector)
        ceiling = {"n_images": len(eval_models.real_images),
                   "metrics": {k: v.to_dict() for k, v in real.metrics.items()
                               if k in ("iou50_rate", "miou", "ap50", "ap", "all_matched_rate")}}
    timings["score_s"] = time.perf_counter() - t0
    targets = evaluate_targets(protocol.targets, rows)
    samples = pd.concat(frames, ignore_index=True)
    timings["total_s"] = time.perf_counter() - started
    n_images = gen_stats.generated + gen_stats.cached
    timings["s_per_image_generated"] = (timings["generate_s"] / gen_stats.generated
                                        if gen_stats.generated else None)
    generation = {**gen_stats.to_dict(), "world_size": world, "phrase_encoding": base.phrase_encoding,
                  "uncond_boxes": protocol.generation.uncond_boxes, "caches": caches,
                  "grounded_steps": grounded_steps(protocol.generation.grounding_fraction,
                                                   protocol.generation.steps),
                  "images_total": n_images}
    models = {"base": base.identity(), **eval_models.identity()}
    results = build_results(protocol=protocol, infos=infos, gate_report=gate_report, rows=rows,
                            targets=targets, models=models, layouts_info=layouts_info,
                            n_layouts=len(layouts), timings=timings, generation=generation,
                            options=options, device=device, dtype=dtype, ceiling=ceiling,
                            layout_ids=[lay.layout_id for lay in layouts])
    paths = {"results": write_json(out / "results.json", results),
             "samples": write_samples_jsonl(samples, out / "samples.jsonl")}
    from gatebench.render.markdown import write_report
    paths["report"] = write_report(results, samples, gate_report, out)
    exit_code = 1 if results["verdict"] == "fail" else 0
    return RunResult(results, samples, targets, gate_report, out, exit_code, paths)
