"""Exception types for everything a user can get wrong.

Every error raised at an edge (a file, a flag, a protocol field) is a ``GatebenchError``: the CLI
turns it into one red line and exit code 2. Messages follow "expected X, got Y in FILE:LINE" so the
user can find and fix the input without reading a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


class GatebenchError(Exception):
    """A user-facing error: bad input, bad usage or a missing file. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        self.hint = hint
        super().__init__(self.render())

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)

    def render(self) -> str:
        text = self.message
        if self.location and self.location not in text:
            text = f"{text} in {self.location}"
        if self.hint:
            text = f"{text}; {self.hint}"
        return text


class ProtocolError(GatebenchError):
    """A protocol TOML file is malformed, has unknown keys or wrong types."""


class CheckpointError(GatebenchError):
    """A checkpoint is missing, unreadable, unsafe or holds no recognisable gates."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle wanted to run code or build objects that ``weights_only`` loading refuses."""


class LogFormatError(GatebenchError):
    """A training log (train.log, TensorBoard, JSONL) could not be parsed."""


class LayoutError(GatebenchError):
    """A layout/annotation row is invalid (bad box, missing field, bad encoding)."""


class ModelFileError(GatebenchError):
    """A model weight file or folder the protocol names is missing or unusable."""


class MetricError(GatebenchError):
    """A metric cannot be computed from what was given: never silently replaced by a default."""


class NotComparableError(GatebenchError):
    """Two result sets cannot be compared (different protocol, layouts, seeds or N)."""


class MissingInputsError(ModelFileError):
    """Inputs a protocol names are missing: all of them in one block, each on its own line, so
    a new machine is set up in one go instead of one missing file per run."""

    def __init__(self, heading: str, items: Sequence[str], *, hint: str | None = None) -> None:
        self.items = list(items)
        super().__init__(heading, hint=hint)

    def render(self) -> str:
        lines = [self.message, *(f"  - {item}" for item in self.items)]
        return "\n".join(lines + ([f"hint: {self.hint}"] if self.hint else []))
