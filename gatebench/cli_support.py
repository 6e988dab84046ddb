"""Small pieces of the CLI that are not commands: progress bar, flag overrides, quiet loads."""
from __future__ import annotations

from typing import Any

from rich.console import Console

from gatebench.protocol import Protocol, load_protocol, resolve_builtin


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
        if isinstance(value, str):
            value = resolve_builtin(value)
        if key in ("seed", "num_samples"):
            top[key] = value
        else:
            section, field_name = mapping[key]
            sections[section][field_name] = value
    return proto.replace(**{k: v for k, v in sections.items() if v}, **top)


def quiet_model_libraries() -> None:
    """diffusers/transformers print progress bars and install hints on every load: a CLI user
    wants gatebench's own output. Errors still surface as exceptions."""
    import os
    import warnings
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # gatebench's own warnings (small-N FID, ...) as one readable line each, not file:line dumps
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    warnings.showwarning = _once_per_message(warnings.showwarning)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


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
