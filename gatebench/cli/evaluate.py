"""The evaluation commands: `run`, `compare`, `report` and `score`.

They produce or read back run folders (results.json + samples.jsonl); cli/__init__.py registers
them on the `gatebench` group, so errors and exit codes follow its contract. Heavy imports stay
inside each command so `gatebench --help` stays fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gatebench.cli.support import RichProgress, consoles, finish, parse_floats
from gatebench.protocol import DEFAULT_PROTOCOL
from gatebench.render import FORMATS
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes
from gatebench.rundir.outputs import check_not_input, ensure_out_dir


@click.command()
@click.option("--ckpt", "checkpoints", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Adapter checkpoint (repeat for an epoch sweep).")
@click.option("--protocol", default=None,
              help=f"Protocol name or TOML file.  [default: {DEFAULT_PROTOCOL}]")
@click.option("--gate-scales", default=None, help="Comma-separated, e.g. 0,0.5,1,2 (0 is always added).")
@click.option("--num-samples", type=int, default=None, help="Number of layouts (first N).")
@click.option("--seed", type=int, default=None)
@click.option("--steps", type=int, default=None, help="Sampler steps.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--base-model", default=None, help="Local diffusers model folder.")
@click.option("--layouts", default=None, help="Layout JSONL / COCO instances file.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gatebench-out"),
              show_default=True, help="Run folder: images/, results.json, samples.jsonl, report.md.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A baseline results.json to compare against (paired regression gate).")
@click.option("--garbled-threshold", type=float, default=None,
              help="Garbled score above this flags an image (default: the protocol's [scoring]).")
@click.option("--blank-threshold", type=float, default=None,
              help="Blank score above this flags an image (default: the protocol's [scoring]).")
@click.option("--until-decided/--fixed-n", default=None,
              help="Generate layouts in rounds and stop as soon as anytime-valid confidence "
                   "sequences decide the verdict (at most N layouts; README: Stop when "
                   "decided). Default: the protocol's [scoring] until_decided.")
def run(checkpoints: tuple[Path, ...], protocol: str | None, gate_scales: str | None,
        num_samples: int | None, seed: int | None, steps: int | None, device: str | None,
        dtype: str | None, batch_size: int | None, base_model: str | None, layouts: str | None,
        out: Path, baseline: Path | None, garbled_threshold: float | None,
        blank_threshold: float | None, until_decided: bool | None) -> None:
    """Generate from ground-truth boxes at every gate scale and judge each checkpoint.

    Gate pre-flight -> batched generation (cached, resumable) -> detection, CLIP, FID/KID, image
    health -> pass/fail against the protocol's targets. Every input file the protocol names is
    checked first: all missing ones are listed at once. Exit 0 all targets pass, 1 a target or
    gate check failed, 2 bad input.
    """
    from gatebench.compare import load_baseline
    from gatebench.inputs import check_inputs
    from gatebench.protocol import load_protocol, with_flags
    from gatebench.render.terminal import render_run
    from gatebench.run import RunOptions, run_evaluation
    from gatebench.rundir.pairing import precheck_protocol

    # the baseline is read before hours of generation, not after
    base_run = load_baseline(baseline, out) if baseline is not None else None
    scales = parse_floats(gate_scales, "--gate-scales") if gate_scales else None
    proto = with_flags(load_protocol(protocol or DEFAULT_PROTOCOL), gate_scales=scales,
                       num_samples=num_samples, seed=seed, steps=steps, dtype=dtype,
                       device=device, batch_size=batch_size, base_model=base_model,
                       layouts=layouts, garbled_threshold=garbled_threshold,
                       blank_threshold=blank_threshold, until_decided=until_decided)
    default_reason = None if protocol else "no --protocol was given"
    check_inputs(proto, default_reason=default_reason)
    if base_run is not None:
        precheck_protocol(base_run.results, proto)
    console, err = consoles()
    if default_reason:
        err.print(escape(f"protocol {proto.name} ({default_reason}; see `gatebench protocols`)"))
    options = RunOptions(out_dir=out, device=device or "auto", batch_size=batch_size,
                         command=" ".join(["gatebench", *sys.argv[1:]]))
    result = run_evaluation(list(checkpoints), proto, options,
                            progress_factory=lambda total: RichProgress(total, "generating"),
                            baseline=base_run)
    if result.results:          # empty on torchrun ranks other than 0: rank 0 reports
        render_run(result, console)
    finish(result.exit_code)


@click.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--metric", "metric_options", multiple=True, metavar="NAME=MAX_DROP",
              help="Allowed drop (a rise for fid/kid/garbled_rate/blank_rate) before a change counts as a "
              "regression, e.g. iou50_rate=0.03; NAME=off reports without gating; set-level "
              "ap50/ap/fid/kid gate (on point values) only when named. Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the JSON verdict here (also when the runs are not comparable).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON verdict on stdout.")
def compare(baseline: Path, candidate: Path, metric_options: tuple[str, ...], out: Path | None,
            as_json: bool) -> None:
    """Paired regression gate: CANDIDATE results.json against BASELINE results.json.

    Pairs per-sample records (samples.jsonl beside each results.json) of the same layouts and
    seeds and bootstraps the difference over layouts. Exit 0 no regression, 1 a regression (a
    change whose whole CI lies beyond the allowed margin on the bad side), 2 not comparable
    (different protocol, seed, layouts or N; the reason is printed).
    """
    from gatebench.compare import regression_gate
    from gatebench.render.compare import parse_metric_options, render_terminal
    from gatebench.rundir.saved import load_run

    margins = parse_metric_options(metric_options)
    comparison = regression_gate(load_run(baseline), load_run(candidate), margins,
                                 verdict_path=out)
    if as_json:
        click.echo(json.dumps(comparison.to_json(), indent=2, ensure_ascii=False))
    else:
        console, _ = consoles()
        render_terminal(comparison, console)
        if out is not None:
            console.print(escape(f"wrote {out}"))
    finish(comparison.exit_code)


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--format", "fmt_name", type=click.Choice(list(FORMATS)), default="md",
              show_default=True, help="md: report.md + PNGs; latex: booktabs tables (.tex); "
              "html: one self-contained file.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file (default: report.md/.tex/.html beside RESULTS); figures are "
              "written beside it.")
def report(results: Path, fmt_name: str, out: Path | None) -> None:
    """Re-render a run's report from results.json + samples.jsonl, recomputing nothing.

    Exit 0 when written (the run's verdict is in the report), 2 on unreadable input.
    """
    from gatebench.render import rerender

    path = rerender(results, fmt_name, out)
    console, _ = consoles()
    console.print(escape(f"wrote {path}"))
    finish(0)


@click.command()
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Folder of images; each pairs with a layout by file name (image_path stem).")
@click.option("--layouts", type=click.Path(path_type=Path), required=True,
              help="Layout JSONL, results.jsonl or COCO instances json.")
@click.option("--detections", type=click.Path(path_type=Path), default=None,
              help="Detections JSONL from any detector (see README); replaces the protocol's detector.")
@click.option("--protocol", default=None, help="Protocol name or TOML (models, thresholds, targets).")
@click.option("--skip-bad", is_flag=True, help="Skip invalid layout rows (counted and reported).")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable result on stdout.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write samples.jsonl, score.json and report.md (flagged thumbnails) here.")
@click.option("--garbled-threshold", type=float, default=None,
              help="Garbled score above this flags an image (default: the protocol's [scoring]).")
@click.option("--blank-threshold", type=float, default=None,
              help="Blank score above this flags an image (default: the protocol's [scoring]).")
def score(images: Path, layouts: Path, detections: Path | None, protocol: str | None,
          skip_bad: bool, device: str, as_json: bool, out: Path | None,
          garbled_threshold: float | None, blank_threshold: float | None) -> None:
    """Score images made elsewhere against their layouts (no generation).

    Metrics whose model is not configured are reported as not computed, never as a number:
    with only --detections, the grounding metrics alone. Exit 1 when a protocol target fails.
    """
    from gatebench.score_run import score_elsewhere, write_score_outputs

    if out is not None:
        ensure_out_dir(out)
        inputs = [layouts, *([detections] if detections is not None else [])]
        check_not_input(out / "samples.jsonl", inputs)
        check_not_input(out / "score.json", inputs)
    document, result, targets = score_elsewhere(
        images, layouts, protocol, detections, device=device, skip_bad=skip_bad,
        garbled_threshold=garbled_threshold, blank_threshold=blank_threshold)
    if out is not None:
        write_score_outputs(document, result, images, out)
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        from gatebench.render.terminal import render_score
        render_score(result, targets, images, out, consoles()[0])
    from gatebench.rundir.results import exit_code
    finish(exit_code(document["verdict"]))
