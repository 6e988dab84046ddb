"""The `gatebench` command line: a thin click layer over the library.

Every user error (a ``GatebenchError``) becomes one red line and exit code 2; ``--debug`` shows the
traceback instead. Commands exit 0 when everything passed, 1 when a target, regression or gate
check failed (ARCHITECTURE.md, "Rules we keep"; README's exit codes).

This module holds the group and the diagnosis commands (gates, check-init, protocols, demo, the
lazy train); run/compare/report/score are in cli/evaluate.py, shared helpers in cli/support.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gatebench import __version__
from gatebench.cli import evaluate as cli_eval
from gatebench.cli.support import (
    RichProgress,
    Terminated,
    consoles,
    finish,
    parse_floats,
    parse_ints,
    sigterm_as_interrupt,
)
from gatebench.cli.watch import watch as watch_command
from gatebench.errors import GatebenchError
from gatebench.files import write_fault
from gatebench.render.console import quiet_model_libraries
from gatebench.render.escape import rich_text as escape  # markup literal, no control codes


class GatebenchGroup(click.Group):
    """Turns library errors into one line + exit 2 for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            # 130 (128 + SIGINT) or 143 (128 + SIGTERM), as shells report them; outputs are
            # written atomically and images are cached, so the same command resumes
            _, err = consoles()
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            err.print(f"{what}; run the same command again to resume", markup=False)
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:
            # the net under every write site: a full disk, a read-only mount or a refused
            # permission is one line naming the path and the fix (exit 2), never a traceback
            fault = write_fault(exc)
            if fault is None or ctx.params.get("debug"):
                raise
            _, err = consoles()
            err.print(f"[bold red]error:[/bold red] {escape(fault.render())}", soft_wrap=True)
            ctx.exit(fault.exit_code)
        except GatebenchError as exc:
            if ctx.params.get("debug"):
                raise
            _, err = consoles()
            # user text (paths, TOML keys like [generation]) is never rich markup
            err.print(f"[bold red]error:[/bold red] {escape(exc.render())}", soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=GatebenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="gatebench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Evaluate and diagnose layout-grounded (GLIGEN-style) diffusion adapters.

    Start with `gatebench demo`, check a checkpoint's gates in seconds with
    `gatebench gates epoch_10.pt`, and evaluate it with `gatebench run --ckpt epoch_10.pt`.
    """


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
    1 on any `fail` finding or when a checkpoint could not be read (a partial save: listed,
    the rest judged), 2 when nothing could be read or on bad usage.
    """
    from gatebench.gates import analyse_paths
    from gatebench.protocol import GateThresholds, load_protocol
    from gatebench.render.gates import render_terminal, write_gate_outputs

    if not paths and not logs:
        raise click.UsageError("give at least one checkpoint path or --log FILE")
    thresholds = load_protocol(protocol).gates if protocol else GateThresholds()
    scales = parse_floats(gate_scales, "--gate-scales") if gate_scales else ()
    report, inputs = analyse_paths(paths, logs, thresholds, scales)
    document = report.to_json()
    if out is not None:
        write_gate_outputs(report, out, inputs)
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        console, _ = consoles()
        render_terminal(report, console, per_gate=not summary)
        if out is not None:
            console.print(escape(f"wrote {out / 'gates.json'}, {out / 'gates.md'}"))
    finish(1 if report.verdict == "fail" or report.unreadable else 0)


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
    from gatebench.render.terminal import render_check_init

    results = check_init(schemes=schemes or ("gligen", "zero-out", "legacy", "deadlock"),
                         widths=parse_ints(widths, "--widths"), text_dim=text_dim,
                         base_model=base_model, checkpoint=ckpt)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        render_check_init(results, IDENTITY_TOL, consoles()[0])
    finish(0 if all(r.ok for r in results) else 1)


@cli.command("protocols")
def protocols_command() -> None:
    """List the evaluation protocols found (./protocols and gatebench's own)."""
    from gatebench.protocol import available_protocols, load_protocol

    console, _ = consoles()
    table = Table(title="protocols", title_justify="left")
    for column in ("name", "file", "gate scales", "targets", "description"):
        table.add_column(column)
    for name, path in available_protocols().items():
        proto = load_protocol(path)
        targets = "; ".join(t.label for t in proto.targets) or "-"
        scales = ", ".join(f"{s:g}" for s in proto.generation.gate_scales)
        table.add_row(escape(name), escape(str(path)), scales, escape(targets), escape(proto.description))
    console.print(table)


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
    from gatebench.readers.protocol_values import check_flag

    for key, value in (("num_samples", num_samples), ("steps", steps), ("device", device)):
        if value is not None:
            check_flag(key, value)
    console, _ = consoles()
    code, _ = run_demo(out, num_samples=num_samples, steps=steps, device=device, console=console,
                       progress_factory=lambda total: RichProgress(total, "generating"))
    finish(code)


# The evaluation commands live in cli/evaluate.py, which never imports this module (no cycle).
for _command in (cli_eval.run, cli_eval.compare, cli_eval.report, cli_eval.score):
    cli.add_command(_command)
cli.add_command(watch_command)   # `gatebench watch RUN_DIR` (cli/watch.py)


class _LazyTrain(click.Command):
    """`gatebench train` loads the training module only when used (gatebench never imports train)."""

    def _real(self) -> click.Command:
        from gatebench.train.cli import train_command
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
                           "module; `python -m gatebench.train` too).", add_help_option=False))


def main() -> None:
    quiet_model_libraries()
    cli(prog_name="gatebench")


if __name__ == "__main__":  # pragma: no cover
    main()
