"""Small pieces of the CLI that are not commands: consoles, exit codes, flag parsing and
overrides, progress bar, quiet loads. Shared by cli.py and cli_eval.py (which must not import cli)."""
from __future__ import annotations

from typing import Any, NoReturn

import click
from rich.console import Console

from gatebench.protocol import Protocol, load_protocol, resolve_builtin


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles; no highlighting, so paths and numbers print as plain text."""
    return Console(highlight=False), Console(stderr=True, highlight=False)


def finish(code: int) -> NoReturn:
    """End a command with the contract's exit code (0 pass, 1 check failed, 2 bad input)."""
    raise click.exceptions.Exit(code)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """A comma-separated number list from a flag; a bad one is one line naming the flag (exit 2)."""
    from gatebench.errors import GatebenchError
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise GatebenchError(f"{flag}: expected comma-separated numbers, got {text!r}",
                             hint=f"e.g. {flag} 0,0.5,1") from None


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    """A comma-separated integer list (``--widths 32.7`` is refused, not truncated)."""
    from gatebench.errors import GatebenchError
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise GatebenchError(f"{flag}: expected comma-separated integers, got {text!r}",
                             hint=f"e.g. {flag} 32,64") from None


class RichProgress:
    """A rich progress bar with a time estimate from the images done so far."""

    def __init__(self, total: int, description: str) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("images"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task(description, total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)
        task = self.progress.tasks[0]
        if task.completed and task.elapsed and task.total:
            per_image = task.elapsed / task.completed
            self.progress.update(self.task, description=(
                f"generating ({per_image:.2f} s/image, est. {per_image * task.total / 60:.1f} min total)"))

    def close(self) -> None:
        self.progress.stop()


def protocol_with_overrides(protocol: str, **flags: Any) -> Protocol:
    """Protocol TOML < CLI flags: only flags the user gave override the protocol."""
    proto = load_protocol(protocol)
    sections: dict[str, dict[str, Any]] = {"generation": {}, "data": {}, "models": {}}
    top: dict[str, Any] = {}
    mapping = {"gate_scales": ("generation", "gate_scales"), "steps": ("generation", "steps"),
               "dtype": ("generation", "dtype"), "device": ("generation", "device"),
               "batch_size": ("generation", "batch_size"), "layouts": ("data", "layouts"),
               "image_dir": ("data", "image_dir"), "base_model": ("models", "base_model"),
               "detector": ("models", "detector")}
    for key, value in flags.items():
        if value is None:
            continue
        check_flag(key, value)
        if isinstance(value, str):
            value = resolve_builtin(value)
        if key in ("seed", "num_samples"):
            top[key] = value
        else:
            section, field_name = mapping[key]
            sections[section][field_name] = value
    return proto.replace(**{k: v for k, v in sections.items() if v}, **top)


_FLAG_FIELDS = {"seed": (None, "seed"), "num_samples": (None, "num_samples"),
                "gate_scales": ("generation", "gate_scales"), "steps": ("generation", "steps"),
                "batch_size": ("generation", "batch_size"), "device": ("generation", "device")}


def check_flag(key: str, value: Any) -> None:
    """A flag's value in its protocol field's range (``--num-samples 0``, ``--device tpu9``):
    exit 2 naming the flag, before any model loads."""
    from gatebench.errors import GatebenchError
    from gatebench.readers.protocol_values import value_problem

    if key in _FLAG_FIELDS:
        problem = value_problem(*_FLAG_FIELDS[key], value)
        if problem:
            raise GatebenchError(f"--{key.replace('_', '-')}: {problem}",
                                 hint="see the command's --help")


def quiet_model_libraries() -> None:
    """diffusers/transformers print progress bars and install hints on every load: a CLI user
    wants gatebench's own output. Errors still surface as exceptions. Set through the libraries'
    own environment variables (a user's explicit setting wins), not by importing them: that
    import cost 2.7 s on every command, `--help` included."""
    import os
    import warnings
    for name, value in (("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                        ("DIFFUSERS_NO_ADVISORY_WARNINGS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):   # transformers' load bars
        os.environ.setdefault(name, value)
    # gatebench's own warnings (small-N FID, ...) as one readable line each, not file:line dumps
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    warnings.showwarning = _once_per_message(warnings.showwarning)


def _once_per_message(show: Any) -> Any:
    """Show each distinct warning text once per process. The "once" filter cannot do it:
    every ``catch_warnings`` block (scipy calls in FID, library loads) resets the registries,
    and the small-N FID warning then printed once per image set (20 times in a demo)."""
    seen: set[tuple[str, type]] = set()

    def show_once(message, category, filename, lineno, file=None, line=None) -> None:
        key = (str(message), category)
        if key not in seen:
            seen.add(key)
            show(message, category, filename, lineno, file, line)
    return show_once
