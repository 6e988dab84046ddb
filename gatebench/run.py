"""`gatebench run`: the pipeline, stage by stage (each stage is its own module):

    checkpoint -> gates -> layouts -> models -> plan + generate -> score -> verdict -> results
    -> render

Everything a number depends on is recorded in results.json (protocol, seed, N, versions, hashes,
timings), every per-image record goes to samples.jsonl, so every aggregate can be recomputed.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence
from typing import Protocol as TypingProtocol

import pandas as pd

from gatebench.adapters.types import CheckpointInfo
from gatebench.checkpoint import inspect_checkpoint
from gatebench.compare import Comparison, regression_gate
from gatebench.distributed import barrier, distributed, import_collective_libraries, sum_over_ranks
from gatebench.errors import GatebenchError, ModelFileError, NotComparableError
from gatebench.files import cache_dir, sweep_temporaries
from gatebench.gates import GateReport, analyse
from gatebench.generate import GenerationStats, Sampler, grounded_steps
from gatebench.image_cache import KEEP_IMAGES_BYTES, KeptImages
from gatebench.layouts import select_layouts
from gatebench.metrics.health import health_workers
from gatebench.metrics.health_prefetch import HealthPrefetch
from gatebench.metrics.twin_cache import TwinCache
from gatebench.models.device import resolve_device, resolve_dtype
from gatebench.plan import LoadedAdapters, generate_all, preflight_adapters, sampler_settings
from gatebench.protocol import Protocol
from gatebench.rundir.outputs import check_writable, ensure_out_dir, run_lock
from gatebench.rundir.results import (
    build_results,
    decide_verdict,
    exit_code,
    layout_ids_sha256,
    record_verdict,
    write_json,
)
from gatebench.rundir.samples import read_samples_jsonl, write_samples_jsonl
from gatebench.rundir.saved import SavedRun, label_map
from gatebench.score_run import ZeroScores, detector_ceiling, score_sets
from gatebench.sequential.rounds import generate_until_decided, sequential_record
from gatebench.verdict import TargetRow, evaluate_targets
from gatebench.writes.findings import write_findings

if TYPE_CHECKING:     # annotations only: the base model and the evaluation models load lazily
    import torch

    from gatebench.metrics.evalmodels import EvalModels
    from gatebench.models.base import BaseModel


class ProgressBar(TypingProtocol):
    """What ``progress_factory(total)`` returns (the CLI's rich bar): advanced per image made."""

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """CLI-level choices that are not part of the protocol (they do not change the numbers)."""

    out_dir: Path
    device: str = "auto"
    batch_size: int | None = None
    command: str = ""
    # the images made stay in memory up to this many bytes for scoring (0: read the PNGs back)
    keep_images_bytes: int = KEEP_IMAGES_BYTES
    # image health beside generation: "auto" when a CPU core is free of it (an accelerator
    # samples, or torch leaves a core idle); on a CPU whose every core samples it only competes
    health_prefetch: Literal["auto", "on", "off"] = "auto"
    # the recipe-hashed image cache (default OUT/images); `watch` gives every checkpoint's run
    # folder one shared cache, so the gate-0 images are made once per watch
    images_root: Path | None = None
    # report.md and its figures (matplotlib: seconds per run on a CPU); `watch` leaves them to
    # `gatebench report RESULTS`, which renders them from the run folder alone
    report: bool = True


@dataclass
class RunResult:
    results: dict[str, Any]
    samples: pd.DataFrame
    targets: list[TargetRow]
    gate_report: GateReport
    out_dir: Path
    exit_code: int
    paths: dict[str, Path] = field(default_factory=dict)
    comparison: Comparison | None = None     # `--baseline`: the regression gate (compare.json)


GENERATION_COUNTS = ("generated", "cached", "nonfinite", "batches", "oom_halvings")
GENERATION_SECONDS = ("seconds", "encode_s", "unet_s", "decode_s", "write_wait_s", "png_write_s")


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - began


def _gate_preflight(infos: Sequence[CheckpointInfo], protocol: Protocol, box_counts: list[int]) -> GateReport:
    report = analyse(infos, [], protocol.gates, protocol.generation.gate_scales, box_counts)
    if protocol.gates.fail_on_findings and report.verdict == "fail":
        raise GatebenchError("gate pre-flight check failed and [gates] fail_on_findings is set: "
                             + "; ".join(f"{f.code} ({f.subject})" for f in report.findings
                                         if f.severity == "fail"))
    return report


def _load_base(protocol: Protocol, device: str, dtype: torch.dtype) -> BaseModel:
    from gatebench.models import load_base_model  # noqa: PLC0415 (diffusers)

    if not protocol.models.base_model:
        raise ModelFileError("expected [models] base_model (a local diffusers folder), got none",
                             path=protocol.source)
    return load_base_model(protocol.models.base_model, device=device, dtype=dtype)


def run_evaluation(checkpoints: Sequence[Path], protocol: Protocol, options: RunOptions, *,
                   eval_models: EvalModels | None = None, base: BaseModel | None = None,
                   progress_factory: Callable[[int], ProgressBar] | None = None,
                   baseline: SavedRun | None = None, zero_scores: ZeroScores | None = None) -> RunResult:
    """The whole `gatebench run` as a library call (the CLI only parses flags and renders).

    ``baseline`` (a SavedRun, `run --baseline`): with ``until_decided``, the regression gate's
    rows are decided by sequences beside the targets, round by round. ``zero_scores``: a memo
    of the gate-0 set's scores kept across calls (`watch`: scored once, not per checkpoint)."""
    started = time.perf_counter()
    # the output folder (and the reference-statistics cache, when FID needs it) take a probe
    # write before anything else: a read-only folder costs seconds, not a model load
    out = ensure_out_dir(options.out_dir)
    if _uses_reference_cache(protocol):
        check_writable(cache_dir(), "the cache folder ($GATEBENCH_CACHE)")
    rank, world = distributed()
    # one run at a time into a folder: a second one exits 2 (rundir/outputs.py run_lock says why)
    with run_lock(out, rank):
        if world == 1:
            # temporaries of killed runs (kill -9, a crash); with several ranks, possibly on
            # other hosts, a pid says nothing about liveness, so they are left alone
            for folder in (out, cache_dir()):
                sweep_temporaries(folder)
        # only rank 0 scores: it keeps the images it makes in memory instead of reading them
        # back, and starts their image health on a thread while the sampler makes the next batch
        keep = (KeptImages(options.keep_images_bytes)
                if rank == 0 and options.keep_images_bytes > 0 else None)
        with HealthPrefetch(garbled_threshold=protocol.scoring.garbled_threshold,
                            blank_threshold=protocol.scoring.blank_threshold,
                            twin_cache=TwinCache()) as health:
            return _evaluate(checkpoints, protocol, options, out, rank, world, started,
                             eval_models=eval_models, base=base,
                             progress_factory=progress_factory, baseline=baseline,
                             keep=keep, health=health if keep is not None else None,
                             zero_scores=zero_scores)


def _prefetch_pays(choice: str, device: str) -> bool:
    """Whether image health may run beside generation without slowing it (RunOptions)."""
    if choice != "auto":
        return choice == "on"
    import torch  # noqa: PLC0415

    return not str(device).startswith("cpu") or torch.get_num_threads() < health_workers()


def _uses_reference_cache(protocol: Protocol) -> bool:
    """Whether scoring will cache FID reference statistics under gatebench's cache folder."""
    m = protocol.models
    return bool(m.inception_weights if m.fid_features == "inception" else m.clip_model)


def _evaluate(checkpoints: Sequence[Path], protocol: Protocol, options: RunOptions, out: Path,
              rank: int, world: int, started: float, *, eval_models: EvalModels | None,
              base: BaseModel | None, progress_factory: Callable[[int], ProgressBar] | None,
              baseline: SavedRun | None,
              keep: KeptImages | None, health: HealthPrefetch | None,
              zero_scores: ZeroScores | None = None) -> RunResult:
    from gatebench.metrics.evalmodels import load_eval_models  # noqa: PLC0415
    from gatebench.render.markdown import write_report  # noqa: PLC0415

    timings: dict[str, float] = {}
    # checkpoint -> gates -> layouts: seconds, no model
    infos = [inspect_checkpoint(p) for p in checkpoints]
    layouts, layouts_info = select_layouts(protocol)
    gate_report = _gate_preflight(infos, protocol, [min(len(lay.objects), protocol.data.max_boxes)
                                                    for lay in layouts])
    import_collective_libraries(protocol, world)     # every rank, before any other collective
    device = resolve_device(options.device if options.device != "auto" else protocol.generation.device)
    dtype = resolve_dtype(protocol.generation.dtype, device)
    if not _prefetch_pays(options.health_prefetch, device):
        health = None
    # models, each loaded once; every adapter checked against the base before any image (that
    # load is the one generation uses)
    with _timed(timings, "load_s"):
        base = base if base is not None else _load_base(protocol, device, dtype)
        if rank == 0:   # only rank 0 scores; it loads the evaluation models up front to fail early
            eval_models = eval_models or load_eval_models(protocol, device=device, layouts=layouts)
        adapters = preflight_adapters(base, infos)
    # plan + generate
    sampler = Sampler(base, sampler_settings(protocol, base))
    scales = sorted(set(protocol.generation.gate_scales) | {0.0})
    total = len(layouts) * (1 + len(infos) * (len(scales) - 1))
    bar = progress_factory(-(-total // world)) if progress_factory and rank == 0 else None
    rounds, all_ids = None, [lay.layout_id for lay in layouts]
    images_root = options.images_root or out / "images"
    with _timed(timings, "generate_s"):
        try:
            batch = options.batch_size or protocol.generation.batch_size
            if protocol.scoring.until_decided:   # rounds until the verdict is decided, or N
                rounds = generate_until_decided(
                    base, sampler, infos, layouts, protocol, eval_models, root=images_root,
                    batch=batch, keep=keep, adapters=adapters, world=world,
                    progress=bar.advance if bar else None, baseline=baseline, health=health)
                items, gen_stats, caches = rounds.items, rounds.stats, rounds.caches
                layouts = rounds.layouts
            else:
                items, gen_stats, caches = generate_all(
                    base, sampler, infos, layouts, protocol, root=images_root, batch=batch,
                    progress=bar.advance if bar else None, shard=(rank, world), keep=keep,
                    adapters=adapters, health=health)
        finally:
            if bar:
                bar.close()
        if world > 1:
            sum_over_ranks(gen_stats, GENERATION_COUNTS, GENERATION_SECONDS)
            barrier("the end of generation (every shard's images on disk)")
    if rank != 0:
        return RunResult({}, pd.DataFrame(), [], gate_report, out, 0)
    assert eval_models is not None      # rank 0 loaded them with the base model
    # score -> verdict
    with _timed(timings, "score_s"):
        samples, rows = score_sets(items, infos, scales, protocol, eval_models, out / "cache",
                                   health=health, zero_scores=zero_scores)
        ceiling = detector_ceiling(protocol, eval_models)
    targets = evaluate_targets(protocol.targets, rows)
    # results -> render
    sequential = None
    if rounds is not None:
        sequential = sequential_record(rounds, protocol, len(all_ids),
                                       sorted({m for r in rows for m in r["metrics"]}))
    timings["total_s"] = time.perf_counter() - started
    per_image = timings["generate_s"] / gen_stats.generated if gen_stats.generated else None
    results = build_results(
        protocol=protocol, gate_report=gate_report, rows=rows, targets=targets,
        models={"base": base.identity(), **eval_models.identity()}, layouts_info=layouts_info,
        n_layouts=len(layouts), timings={**timings, "s_per_image_generated": per_image},
        generation=_generation_record(gen_stats, world, base, protocol, caches, adapters, keep,
                                      health),
        command=options.command, device=device, dtype=dtype, ceiling=ceiling,
        layout_ids=[lay.layout_id for lay in layouts])
    if sequential is not None:
        # the N layouts it may stop short of: what a baseline run of the same protocol holds
        results["sequential"], results["max_layouts"] = sequential, len(all_ids)
        results["max_layout_ids_sha256"] = layout_ids_sha256(all_ids)
    # why placement fails, read from where the adapter writes (warnings: never the verdict)
    results["write_findings"] = [f.to_dict() for f in write_findings(
        rows, results["checkpoints"], label_map(results))]
    paths = {"samples": write_samples_jsonl(samples, out / "samples.jsonl")}
    comparison, not_comparable = None, None
    if baseline is not None:     # the paired regression gate on the records just written
        try:
            comparison = _regression_gate(baseline, results, out)
        except NotComparableError as exc:   # recorded as a failed part, then exit 2
            not_comparable = exc
    regression = (comparison.to_json() if comparison is not None else
                  {"verdict": "not_comparable", "reasons": [not_comparable.message]}
                  if not_comparable is not None else None)
    record_verdict(results, decide_verdict(targets, gate_report.verdict, regression=regression,
                                           sequential=sequential))
    paths["results"] = write_json(out / "results.json", results)
    if options.report:
        paths["report"] = write_report(results, samples, gate_report, out,
                                       comparison=regression if comparison is not None else None)
    if not_comparable is not None:
        raise not_comparable
    return RunResult(results, samples, targets, gate_report, out, exit_code(results["verdict"]),
                     paths, comparison)


def _regression_gate(baseline: SavedRun, results: dict[str, Any], out: Path) -> Comparison:
    """`run --baseline`: compare's gate over this run's records as the files hold them
    (samples.jsonl as written, results as JSON reads them back); compare.json beside them."""
    candidate = SavedRun(json.loads(json.dumps(results, default=str)),
                         read_samples_jsonl(out / "samples.jsonl"), out / "results.json")
    return regression_gate(baseline, candidate, verdict_path=out / "compare.json")


def _generation_record(stats: GenerationStats, world: int, base: BaseModel, protocol: Protocol,
                       caches: list[dict], adapters: LoadedAdapters | None = None,
                       keep: KeptImages | None = None,
                       health: HealthPrefetch | None = None) -> dict[str, Any]:
    g = protocol.generation
    return {**stats.to_dict(), "world_size": world, "phrase_encoding": base.phrase_encoding,
            "uncond_boxes": g.uncond_boxes, "caches": caches,
            "grounded_steps": grounded_steps(g.grounding_fraction, g.steps),
            "images_total": stats.generated + stats.cached,
            # one load per adapter when the preflight's is reused; images scored from memory
            "adapter_loads": adapters.loads if adapters is not None else None,
            "images_kept_in_memory": len(keep) if keep is not None else 0,
            # image health started during generation, off the scoring stage's path
            "health_prefetched": len(health) if health is not None else 0}
