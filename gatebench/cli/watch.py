"""`gatebench watch RUN_DIR`: evaluate a training run's checkpoints as they land.

The click layer only: flags -> protocol and WatchOptions, one library call
(gatebench.watch.follow.watch), one line per event, the best checkpoint, the exit code.
Registered on the `gatebench` group by cli/__init__.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gatebench.cli.support import RichProgress, consoles, finish, parse_floats
from gatebench.protocol import DEFAULT_PROTOCOL
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes


@click.command("watch")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--protocol", default=None,
              help=f"Protocol name or TOML file.  [default: {DEFAULT_PROTOCOL}]")
@click.option("--num-samples", type=int, default=None, help="Number of layouts (first N): "
              "the probe set every checkpoint is evaluated on.")
@click.option("--gate-scales", default=None, help="Comma-separated, e.g. 0,0.5,1 (0 is always "
              "added, and made once per watch).")
@click.option("--until-decided/--fixed-n", default=None,
              help="Per checkpoint, stop generating once the verdict is decided (as run).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gatebench-watch"),
              show_default=True, help="watch.json, one run folder per checkpoint, the images.")
@click.option("--tensorboard", type=click.Path(path_type=Path), default=None,
              help="TensorBoard folder; eval/ points go to its gatebench/ subfolder. Default: "
                   "the run's own TensorBoard folder, else OUT/tensorboard.")
@click.option("--once", is_flag=True, help="Evaluate every complete checkpoint present, then "
              "exit with the verdict's code (the CI form).")
@click.option("--poll", type=float, default=30.0, show_default=True,
              help="Seconds between looks at the run folder in follow mode.")
@click.option("--settle", type=float, default=10.0, show_default=True,
              help="A file is read once its size and mtime are unchanged this long.")
@click.option("--unreadable-after", type=float, default=60.0, show_default=True,
              help="A settled file that still does not load after this long is reported "
                   "unreadable (once).")
@click.option("--idle-timeout", type=float, default=None,
              help="Follow mode ends when no checkpoint file changed for this many seconds "
                   "(a trainer that died); default: never.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=int, default=None)
@click.option("--steps", type=int, default=None, help="Sampler steps.")
def watch(run_dir: Path, protocol: str | None, num_samples: int | None, gate_scales: str | None,
          until_decided: bool | None, out: Path, tensorboard: Path | None, once: bool,
          poll: float, settle: float, unreadable_after: float, idle_timeout: float | None,
          device: str | None,
          batch_size: int | None, steps: int | None) -> None:
    """Evaluate a training run while it trains: every checkpoint once, as it lands.

    Each checkpoint gets a normal run folder (results.json for `report` and `compare`), eval/
    scalars at its training step in TensorBoard, and findings (loss_not_falling, the gate
    findings, control_not_growing, regression_vs_best, garbled_images). Models load once.
    Exit: with --once the newest checkpoint's verdict (0 pass, 1 fail; 2 no checkpoint); in
    follow mode the same when the run's final checkpoint is evaluated; 130/143 on a signal
    (the same command resumes).
    """
    from gatebench.inputs import check_inputs
    from gatebench.protocol import load_protocol, with_flags
    from gatebench.readers.protocol_values import check_flag
    from gatebench.watch.evaluate import WatchOptions
    from gatebench.watch.follow import watch as run_watch

    for key, value in (("poll", poll), ("settle", settle), ("unreadable_after", unreadable_after),
                       ("idle_timeout", idle_timeout if idle_timeout is not None else 0.0)):
        if value < 0:
            raise click.BadParameter(f"expected seconds >= 0, got {value:g}",
                                     param_hint=f"--{key.replace('_', '-')}")
    if num_samples is not None:
        check_flag("num_samples", num_samples)
    scales = parse_floats(gate_scales, "--gate-scales") if gate_scales else None
    proto = with_flags(load_protocol(protocol or DEFAULT_PROTOCOL), gate_scales=scales,
                       num_samples=num_samples, steps=steps, device=device,
                       batch_size=batch_size, until_decided=until_decided)
    check_inputs(proto, default_reason=None if protocol else "no --protocol was given")
    console, err = consoles()
    options = WatchOptions(out=out, device=device or "auto", batch_size=batch_size,
                           command=" ".join(["gatebench", *sys.argv[1:]]), settle_s=settle,
                           unreadable_after_s=unreadable_after, poll_s=poll, once=once,
                           idle_timeout_s=idle_timeout,
                           tensorboard=tensorboard)
    result = run_watch(run_dir, proto, options,
                       on_event=lambda line: err.print(escape(line), soft_wrap=True),
                       progress_factory=lambda total: RichProgress(total, "generating"))
    state = result.state
    counts: dict[str, int] = {}
    for entry in state.checkpoints:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    shown = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no checkpoint"
    console.print(escape(f"{run_dir}: {shown}; {result.evaluated_now} evaluated now"))
    if state.best is not None:
        b = state.best
        shown_value = "not computed" if b["value"] is None else f"{b['value']:.4g}"
        console.print(escape(f"best on the probe set: {b['path']} (step {b['tb_step']}): "
                             f"{b['metric']} {shown_value} at gate scale {b['gate_scale']:g}"))
        console.print(escape(f"note: {b['note']}; run:\n  {b['held_out_command']}"),
                      soft_wrap=True)     # the command stays one line to copy
    console.print(escape(f"verdict (newest checkpoint): {state.verdict}; "
                         f"{result.out / 'watch.json'}, {result.out / 'trajectory.md'}; "
                         f"TensorBoard: {result.tensorboard}"), soft_wrap=True)
    finish(result.exit_code)
