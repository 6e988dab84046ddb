"""The one JSONL reader: layouts, detections, samples and training logs read lines the same way.

Why one: four readers had four rules (one caught deep nesting, three did not; one skipped a BOM
on the first line only, one decoded the whole file so a bad byte had no line number). The rule,
for every JSONL file gatebench reads:

- a blank or whitespace-only line is skipped;
- a UTF-8 BOM at the start of a line is ignored (files joined with ``cat`` keep theirs);
- a line that is not UTF-8, not JSON, nested too deeply to parse (``RecursionError``) or not a
  JSON object is an error naming ``file:line`` and what was wrong, or, where the caller allows
  skipping (``load_layouts(skip_bad=True)``), a skipped line with that same reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gatebench.errors import GatebenchError

_BOM = b"\xef\xbb\xbf"


class BadLine(ValueError):
    """One line broke the rule; ``reason`` is the sentence for the user."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class JsonlRow:
    """A parsed line and its 1-based line number (for every later message about it)."""

    line: int
    value: dict[str, Any]


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """One line's object; None for a blank line; ``BadLine`` for anything else."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"expected UTF-8 text, got byte {raw[exc.start]:#04x} at column "
                      f"{exc.start + 1}") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine(f"expected a JSON object, got invalid JSON ({exc.msg} at column "
                      f"{exc.colno})") from None
    except RecursionError:
        raise BadLine("expected a JSON object, got one nested too deeply to read") from None
    if not isinstance(value, dict):
        raise BadLine(f"expected a JSON object, got a JSON {_json_type(value)}")
    return value


def read_jsonl(path: str | Path, *, what: str, error: type[GatebenchError] = GatebenchError,
               on_bad: Callable[[int, str], None] | None = None,
               hint: str | None = None) -> list[JsonlRow]:
    """Every object line of ``path``. A bad line raises ``error`` at ``path:line`` unless
    ``on_bad`` is given, which then receives (line, reason) and the line is skipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror or exc})", path=path,
                    hint=hint) from None
    rows: list[JsonlRow] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            value = parse_line(raw)
        except BadLine as exc:
            if on_bad is None:
                fix = "re-save the file as UTF-8" if "UTF-8" in exc.reason else hint
                raise error(exc.reason, path=path, line=number, hint=fix) from None
            on_bad(number, exc.reason)
            continue
        if value is not None:
            rows.append(JsonlRow(number, value))
    return rows


def first_row(path: Path) -> dict[str, Any] | None:
    """The first object line, or None when there is none or it breaks the rule (the full read
    reports that with its line)."""
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    value = parse_line(raw.rstrip(b"\r\n"))
                except BadLine:
                    return None
                if value is not None:
                    return value
    except OSError:
        return None
    return None


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
