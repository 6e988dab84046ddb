"""Quiet model libraries for any command line (``gatebench`` and the trainer's own): their
progress bars and install hints off, warnings as one readable line each. Here, not in cli/, so
the trainer's CLI uses it without importing gatebench.cli (which lazily imports the trainer)."""
from __future__ import annotations

from typing import Any


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
