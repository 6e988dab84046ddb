"""Small pieces of the CLI that are not commands: consoles, exit codes, list flags, progress
bar. Shared by cli/__init__.py and cli/evaluate.py (which must not import the former).
Quieting the model libraries is render/console.py's (the trainer's CLI uses it too). Which flag
overrides which protocol field is the library's (readers/protocol_values.py FLAG_FIELDS,
protocol.with_flags)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import click
from rich.console import Console


def consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles; no highlighting, so paths and numbers print as plain text."""
    return Console(highlight=False), Console(stderr=True, highlight=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send before a kill), raised where SIGINT raises KeyboardInterrupt.

    A KeyboardInterrupt subclass, so every cleanup that runs on Ctrl-C runs on SIGTERM too; the
    CLI exits 143 (128 + SIGTERM) with the same resume hint.
    """

    exit_code = 128 + signal.SIGTERM


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        console = Console(stderr=True)
        # a CI log is 80 columns: there the bar goes, so no count or time is ever cut
        bar = [BarColumn()] if console.width >= 110 else []
        self.progress = Progress(TextColumn("{task.description}"), *bar, MofNCompleteColumn(),
                                 TextColumn("images"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task = self.progress.add_task(description, total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)
        task = self.progress.tasks[0]
        if task.completed and task.elapsed and task.total:
            per_image = task.elapsed / task.completed
            self.progress.update(self.task, description=(
                f"generating ({per_image:.2f} s/image, ~{per_image * task.total / 60:.1f} min)"))

    def close(self) -> None:
        self.progress.stop()
