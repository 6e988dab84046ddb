"""The `gatebench` command line: a thin click layer over the library.

Every user error (a ``GatebenchError``) becomes one red line and exit code 2; ``--debug`` shows the
traceback instead. Commands exit 0 when everything passed, 1 when a target, regression or gate
check failed (DESIGN.md "Contracts").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from gatebench import __version__
from gatebench.cli_support import RichProgress, protocol_with_overrides, quiet_model_libraries
from gatebench.errors import GatebenchError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _consoles() -> tuple[Console, Console]:
    return Console(highlight=False), Console(stderr=True, highlight=False)


def finish(code: int) -> NoReturn:
    raise click.exceptions.Exit(code)


class GatebenchGroup(click.Group):
    """Turns library errors into one line + exit 2 for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GatebenchError as exc:
            if ctx.params.get("debug"):
                raise
            _, err = _consoles()
            err.print(f"[bold red]error:[/bold red] {exc.render()}", soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=GatebenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="gatebench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Evaluate and diagnose layout-grounded (GLIGEN-style) diffusion adapters.

    Start with `gatebench demo`, check a checkpoint's gates in seconds with
    `gatebench gates epoch_10.pt`, and evaluate it with `gatebench run --ckpt epoch_10.pt`.
    """


def _expand_paths(paths: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """Files stay as given; a folder contributes its checkpoints and its training logs."""
    checkpoints: list[Path] = []
    log_dirs: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
            checkpoints += found
            if (any(path.glob("*.log")) or any(path.glob("*.jsonl"))
                    or any(path.rglob("events.out.tfevents*"))):
                log_dirs.append(path)
            if not found and path not in log_dirs:
                raise GatebenchError("expected checkpoints (*.pt, *.safetensors, ...) or training "
                                     "logs in the folder, found neither", path=path)
        else:
            checkpoints.append(path)
    return checkpoints, log_dirs


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--log", "logs", multiple=True, type=click.Path(path_type=Path),
              help="train.log, a TensorBoard folder/event file or a gatebench JSONL log (repeatable).")
@click.option("--protocol", default=None, help="Protocol name or TOML file (gate thresholds).")
@click.option("--gate-scales", default=None, help="Comma-separated inference gate scales to check "
              "against the training range, e.g. 0.5,1,2.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable result on stdout.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write gates.json, gates.md and gate_trajectory.png into this folder.")
@click.option("--summary", is_flag=True, help="Hide the per-gate tables.")
def gates(paths: tuple[Path, ...], logs: tuple[Path, ...], protocol: str | None,
          gate_scales: str | None, as_json: bool, out: Path | None, summary: bool) -> None:
    """Gate tables, trajectory and health findings for checkpoints and/or training logs.

    PATHS are checkpoint files or folders (a folder adds its checkpoints and the train.log /
    TensorBoard / JSONL logs inside it). No GPU needed. Exit 0 healthy or warnings only,
    1 on any `fail` finding, 2 on unreadable input.
    """
    from gatebench.checkpoint import inspect_checkpoint
    from gatebench.gates import analyse, to_json
    from gatebench.gates_render import plot_trajectory, render_markdown, render_terminal
    from gatebench.logs import read_logs
    from gatebench.protocol import GateThresholds, load_protocol

    if not paths and not logs:
        raise click.UsageError("give at least one checkpoint path or --log FILE")
    thresholds = load_protocol(protocol).gates if protocol else GateThresholds()
    checkpoint_paths, log_dirs = _expand_paths(paths)
    infos = [inspect_checkpoint(p) for p in checkpoint_paths]
    series = [s for source in (*log_dirs, *logs) for s in read_logs(source)]
    scales = _parse_floats(gate_scales, "--gate-scales") if gate_scales else ()
    report = analyse(infos, series, thresholds, scales)
    document = to_json(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_trajectory(report, out / "gate_trajectory.png")
        (out / "gates.json").write_text(json.dumps(document, indent=2, ensure_ascii=False),
                                        encoding="utf-8")
        (out / "gates.md").write_text(render_markdown(report, plot.name if plot else None),
                                      encoding="utf-8")
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        console, _ = _consoles()
        render_terminal(report, console, per_gate=not summary)
        if out is not None:
            console.print(f"wrote {out / 'gates.json'}, {out / 'gates.md'}")
    finish(1 if report.verdict == "fail" else 0)


def _parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=flag) from None


@cli.command("check-init")
@click.option("--init", "schemes", multiple=True,
              type=click.Choice(["gligen", "zero-out", "legacy", "deadlock"]),
              help="Init scheme(s) to check; default: all four.")
@click.option("--widths", default="32,64", show_default=True,
              help="UNet widths with cross-attention, e.g. 640,1280 for Kolors/SDXL.")
@click.option("--text-dim", default=32, show_default=True, type=int,
              help="Phrase embedding width (4096 for Kolors' ChatGLM).")
@click.option("--base-model", type=click.Path(path_type=Path), default=None,
              help="A local diffusers model folder to use instead of a tiny UNet.")
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="Check this adapter checkpoint's weights instead of a fresh init.")
@click.option("--json", "as_json", is_flag=True)
def check_init_command(schemes: tuple[str, ...], widths: str, text_dim: int,
                       base_model: Path | None, ckpt: Path | None, as_json: bool) -> None:
    """Check that the adapter is the identity at init AND that gradients reach it.

    (a) UNet output with and without the adapter equal within 1e-6; (b) one backward pass gives a
    non-zero gradient to the gate or to `to_out` (no deadlock). Exit 1 if a check fails.
    """
    from gatebench.check_init import IDENTITY_TOL, check_init

    state = None
    if ckpt is not None:
        from gatebench.checkpoint import read_raw, strip_module_prefix
        raw, _ = read_raw(ckpt)
        state = strip_module_prefix({k: v for k, v in raw.items()})
    width_tuple = tuple(int(w) for w in _parse_floats(widths, "--widths"))
    results = check_init(schemes=schemes or ("gligen", "zero-out", "legacy", "deadlock"),
                         widths=width_tuple, text_dim=text_dim, base_model=base_model,
                         state_dict=state)
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "identity_ok": r.identity_ok,
                                "gradient_ok": r.gradient_ok, "ok": r.ok} for r in results], indent=2))
    else:
        console, _ = _consoles()
        table = Table(title=f"check-init (identity tolerance {IDENTITY_TOL:g})", title_justify="left")
        for column in ("init", "identity max |diff|", "identity", "grad |gate|", "grad |to_out|",
                       "gradient", "verdict"):
            table.add_column(column, justify="left" if column == "init" else "right")
        mark = lambda ok: "[green]ok[/green]" if ok else "[red]FAIL[/red]"  # noqa: E731
        for r in results:
            table.add_row(r.scheme, f"{r.identity_max_abs_diff:.2e}", mark(r.identity_ok),
                          f"{r.gate_grad_norm:.2e}", f"{r.to_out_grad_norm:.2e}",
                          mark(r.gradient_ok), mark(r.ok))
        console.print(table)
    finish(0 if all(r.ok for r in results) else 1)


@cli.command("protocols")
def protocols_command() -> None:
    """List the evaluation protocols found (./protocols and gatebench's own)."""
    from gatebench.protocol import available_protocols, load_protocol

    console, _ = _consoles()
    table = Table(title="protocols", title_justify="left")
    for column in ("name", "file", "gate scales", "targets", "description"):
        table.add_column(column)
    for name, path in available_protocols().items():
        proto = load_protocol(path)
        targets = "; ".join(t.label for t in proto.targets) or "-"
        scales = ", ".join(f"{s:g}" for s in proto.generation.gate_scales)
        table.add_row(name, str(path), scales, targets, proto.description)
    console.print(table)


@cli.command()
@click.option("--ckpt", "checkpoints", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Adapter checkpoint (repeat for an epoch sweep).")
@click.option("--protocol", default="oracle-coco2014", show_default=True,
              help="Protocol name or TOML file.")
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
def run(checkpoints: tuple[Path, ...], protocol: str, gate_scales: str | None,
        num_samples: int | None, seed: int | None, steps: int | None, device: str | None,
        dtype: str | None, batch_size: int | None, base_model: str | None, layouts: str | None,
        out: Path, baseline: Path | None) -> None:
    """Generate from ground-truth boxes at every gate scale and judge each checkpoint.

    Gate pre-flight -> batched generation (cached, resumable) -> detection, CLIP, FID/KID, image
    health -> pass/fail against the protocol's targets. Exit 0 all targets pass, 1 a target or
    gate check failed, 2 bad input.
    """
    from gatebench.run import RunOptions, run_evaluation
    from gatebench.run_render import render_run

    base_run = None
    if baseline is not None:   # read it before hours of generation, not after
        from gatebench.saved_run import load_run
        base_run = load_run(baseline)
    scales = _parse_floats(gate_scales, "--gate-scales") if gate_scales else None
    proto = protocol_with_overrides(protocol, gate_scales=scales, num_samples=num_samples,
                                    seed=seed, steps=steps, dtype=dtype, device=device,
                                    batch_size=batch_size, base_model=base_model, layouts=layouts)
    if base_run is not None:
        from gatebench.compare import precheck_protocol
        precheck_protocol(base_run.results, proto)
    console, _ = _consoles()
    options = RunOptions(out_dir=out, device=device or "auto", batch_size=batch_size,
                         command=" ".join(["gatebench", *sys.argv[1:]]))
    result = run_evaluation(list(checkpoints), proto, options,
                            progress_factory=lambda total: RichProgress(total, "generating"))
    code = result.exit_code
    if result.results:          # empty on torchrun ranks other than 0: rank 0 reports
        render_run(result, console)
        if base_run is not None:
            code = max(code, _baseline_check(base_run, result, console))
    finish(code)


def _baseline_check(base_run: Any, result: Any, console: Console) -> int:
    """`run --baseline`: the paired regression gate on the run just written (compare.json and a
    report section); its exit code combines with the targets' (1 if either fails)."""
    from gatebench.compare import comparability_problems, compare_runs
    from gatebench.compare_render import not_comparable_json, render_terminal, write_verdict
    from gatebench.errors import NotComparableError
    from gatebench.report import write_report
    from gatebench.saved_run import load_run

    candidate = load_run(result.paths["results"])
    verdict_path = result.out_dir / "compare.json"
    try:
        comparison = compare_runs(base_run, candidate)
    except NotComparableError as exc:
        reasons = comparability_problems(base_run.results, candidate.results) or [exc.message]
        write_verdict(not_comparable_json(base_run.path, candidate.path, reasons), verdict_path)
        raise
    document = comparison.to_json()
    write_verdict(document, verdict_path)
    write_report(result.results, result.samples, result.gate_report, result.out_dir,
                 comparison=document)
    render_terminal(comparison, console, all_rows=False)
    console.print(f"regression verdict: {verdict_path}")
    return comparison.exit_code


@cli.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--metric", "metric_options", multiple=True, metavar="NAME=MAX_DROP",
              help="Allowed drop (a rise for fid/kid/garbled_rate) before a change counts as a "
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
    from gatebench.compare import comparability_problems, compare_runs
    from gatebench.compare_render import (not_comparable_json, parse_metric_options,
                                          render_terminal, write_verdict)
    from gatebench.errors import NotComparableError
    from gatebench.saved_run import load_run

    margins = parse_metric_options(metric_options)
    base_run, cand_run = load_run(baseline), load_run(candidate)
    try:
        comparison = compare_runs(base_run, cand_run, margins)
    except NotComparableError as exc:
        if out is not None:
            reasons = comparability_problems(base_run.results, cand_run.results) or [exc.message]
            write_verdict(not_comparable_json(base_run.path, cand_run.path, reasons), out)
        raise
    document = comparison.to_json()
    if out is not None:
        write_verdict(document, out)
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        console, _ = _consoles()
        render_terminal(comparison, console)
        if out is not None:
            console.print(f"wrote {out}")
    finish(comparison.exit_code)


@cli.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--format", "fmt_name", type=click.Choice(["md", "latex", "html"]), default="md",
              show_default=True, help="md: report.md + PNGs; latex: booktabs tables (.tex); "
              "html: one self-contained file.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file (default: report.md/.tex/.html beside RESULTS); figures are "
              "written beside it.")
def report(results: Path, fmt_name: str, out: Path | None) -> None:
    """Re-render a run's report from results.json + samples.jsonl, recomputing nothing.

    Exit 0 when written (the run's verdict is in the report), 2 on unreadable input.
    """
    from gatebench.report import rerender

    path = rerender(results, fmt_name, out)
    console, _ = _consoles()
    console.print(f"wrote {path}")
    finish(0)


@cli.command()
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
              help="Write samples.jsonl and score.json here.")
def score(images: Path, layouts: Path, detections: Path | None, protocol: str | None,
          skip_bad: bool, device: str, as_json: bool, out: Path | None) -> None:
    """Score images made elsewhere against their layouts (no generation).

    Metrics whose model is not configured are reported as not computed, never as a number:
    with only --detections, the grounding metrics alone. Exit 1 when a protocol target fails.
    """
    import dataclasses

    from gatebench.evalmodels import load_eval_models
    from gatebench.protocol import Protocol, load_protocol
    from gatebench.run import resolve_device, write_json
    from gatebench.score import score_folder, write_samples_jsonl
    from gatebench.verdict import evaluate_targets

    proto = load_protocol(protocol) if protocol else Protocol(name="score")
    # Targets of a generation protocol name gate scales; here every image counts once.
    proto = dataclasses.replace(proto, targets=tuple(dataclasses.replace(t, gate_scales=None)
                                                     for t in proto.targets))
    if detections is not None:
        proto = proto.replace(models={"detector": None})
    dev = resolve_device(device)
    models = load_eval_models(proto, device=dev) if protocol else None
    kwargs = models.score_kwargs() if models else {}
    result = score_folder(images, layouts, proto, detections, skip_bad=skip_bad, **kwargs)
    row = {"checkpoint": str(images), "gate_scale": None, "n_images": len(result.samples),
           "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
           "not_computed": dict(result.not_computed)}
    targets = evaluate_targets(proto.targets, [row])
    document = {"schema_version": 1, "images": str(images), "layouts": str(layouts),
                "protocol": proto.name, **result.to_dict(),
                "models": models.identity() if models else {},
                "targets": [t.to_dict() for t in targets],
                "verdict": "fail" if any(not t.passed for t in targets) else "pass"}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_samples_jsonl(result.samples, out / "samples.jsonl")
        write_json(out / "score.json", document)
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        from gatebench.report import value_ci
        console, _ = _consoles()
        table = Table(title=f"{len(result.samples)} images in {images}", title_justify="left")
        for column in ("metric", "value [95% CI]", "n"):
            table.add_column(column)
        for name, value in result.metrics.items():
            table.add_row(name, value_ci(value.to_dict()), str(value.n))
        for name, reason in result.not_computed.items():
            table.add_row(name, f"[yellow]not computed[/yellow] ({reason})", "-")
        console.print(table)
        for t in targets:
            mark = "[green]pass[/green]" if t.passed else "[red]FAIL[/red]"
            console.print(f"target {t.metric} {t.op} {t.threshold:g}: {mark} {t.note}")
        if out is not None:
            console.print(f"wrote {out / 'samples.jsonl'} and {out / 'score.json'}")
    finish(1 if document["verdict"] == "fail" else 0)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("gatebench-demo"),
              show_default=True)
@click.option("--num-samples", type=int, default=None, help="Fewer layouts for a quicker look.")
@click.option("--steps", type=int, default=None, help="Fewer sampler steps for a quicker look.")
@click.option("--device", default="auto", show_default=True)
def demo(out: Path, num_samples: int | None, steps: int | None, device: str) -> None:
    """The embedded shapes world, end to end, on a CPU.

    Gates of three shipped checkpoint series (well trained, legacy init, deadlock), generation at
    gate scales 0/0.5/1/2, detection, CLIP, FID/KID, image health, verdicts and a report. Exit 0
    when the harness told the checkpoints apart as expected.
    """
    from gatebench.demo import run_demo

    console, _ = _consoles()
    code, _ = run_demo(out, num_samples=num_samples, steps=steps, device=device, console=console,
                       progress_factory=lambda total: RichProgress(total, "generating"))
    finish(code)


class _LazyTrain(click.Command):
    """`gatebench train` loads the training module only when used (gatebench never imports train)."""

    def _real(self) -> click.Command:
        from train.cli import train_command
        return train_command

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return self._real().get_params(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return self._real().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        return self._real().invoke(ctx)

    def get_help(self, ctx: click.Context) -> str:
        return self._real().get_help(ctx)


cli.add_command(_LazyTrain("train", help="Train an adapter on a frozen base (the embedded training "
                           "module; `python -m train` too).", add_help_option=False))


def main() -> None:
    quiet_model_libraries()
    cli(prog_name="gatebench")


if __name__ == "__main__":  # pragma: no cover
    main()
