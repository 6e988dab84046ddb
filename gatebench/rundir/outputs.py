"""Where outputs may go: never onto an input, never half-written.

`report RUN/results.json --out RUN/results.json` or `compare A B --out A` used to replace the very
files they read; an `--out` folder that is an existing file failed with a traceback. Every writer
of a user-named output checks here first, and text outputs are written to a temporary file
beside the target and renamed (gatebench.files.atomic_write_text), so an interrupted write
leaves the old file whole.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from gatebench.errors import GatebenchError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(out: Path, inputs: Iterable[Path], flag: str = "--out") -> None:
    """Refuse an output path that is (or resolves to) one of the command's input files."""
    out = Path(out)
    for source in inputs:
        source = Path(source)
        if _same(out, source) or out.resolve() == source.resolve():
            raise GatebenchError(f"{flag}: expected an output path different from every input, "
                                 f"got the input '{source}'", path=out,
                                 hint=f"choose another {flag} path; the input is left unchanged")


def ensure_out_dir(out: Path, flag: str = "--out") -> Path:
    """Create an output folder; an existing *file* there is an error, not a traceback."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GatebenchError(f"{flag}: expected a folder, got an existing file", path=out,
                             hint=f"pass a folder path to {flag} (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GatebenchError(f"{flag}: cannot create the output folder ({exc.strerror})",
                             path=out, hint="check the path and its permissions") from None
    return out
