"""The boundary for checkpoint *metadata*: the gatebench header (a .pt dict or the JSON in a
.safetensors file's ``gatebench`` metadata key) and its ``training`` block.

A header is written by our own code, but a file on disk can hold anything (a hand-edited
safetensors header, a foreign dict that happens to say ``format: gatebench-adapter``). Every field
is checked here, once, so the rest of the library can trust the types; a wrong one is a
``CheckpointError`` naming the file and the field.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from gatebench.errors import CheckpointError

_MAPPINGS = ("adapter_config", "base_model", "training")
_INT_FIELDS = ("step", "epoch")
_FLOAT_FIELDS = ("gate_init", "scale_min", "scale_max")
_STR_FIELDS = ("init_scheme", "data_sha256")
HISTORY_ROW = "[step, mean, std, min, max]"


def _bad(field: str, expected: str, value: Any, path: Path) -> CheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(f"expected header field '{field}' to be {expected}, got "
                           f"{type(value).__name__} {shown}", path=path,
                           hint="the checkpoint's metadata is damaged; re-save it with "
                           "gatebench.checkpoint.save_checkpoint")


def parse_safetensors_header(text: str, path: Path) -> dict[str, Any]:
    """The JSON under a .safetensors file's ``gatebench`` metadata key, as a checked dict."""
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"expected JSON in the safetensors metadata key 'gatebench', got "
                              f"invalid JSON ({getattr(exc, 'msg', type(exc).__name__)})",
                              path=path, hint="re-save it with gatebench.checkpoint."
                              "save_checkpoint, or drop the 'gatebench' metadata key") from None
    if not isinstance(header, dict):
        raise _bad("gatebench", "a JSON object", header, path)
    return validate_header(header, path)


def validate_header(header: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Check the types of a gatebench header's top-level fields (mappings, family, version)."""
    header = dict(header)
    version = header.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad("format_version", "an integer", version, path)
    family = header.get("family")
    if family is not None and family not in ("user", "gligen"):
        raise _bad("family", "'user' or 'gligen'", family, path)
    for name in _MAPPINGS:
        value = header.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise _bad(name, "a mapping", value, path)
    if header.get("training") is not None:
        header["training"] = validate_training(header["training"], path)
    return header


def _integer(value: Any, field: str, path: Path) -> int:
    """An int, or a float with an integral value (JSON round trips); nothing else."""
    if isinstance(value, bool):
        raise _bad(field, "an integer", value, path)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _bad(field, "an integer", value, path)


def _number(value: Any, field: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(field, "a number", value, path)
    try:
        return float(value)
    except OverflowError:
        raise _bad(field, "a number a float can hold", value, path) from None


def validate_training(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ``training`` block: typed fields and ``gate_history`` rows of five numbers."""
    out = dict(raw)
    for name in _INT_FIELDS:
        if out.get(name) is not None:
            out[name] = _integer(out[name], f"training.{name}", path)
    for name in _FLOAT_FIELDS:
        if out.get(name) is not None:
            out[name] = _number(out[name], f"training.{name}", path)
    for name in _STR_FIELDS:
        if out.get(name) is not None and not isinstance(out[name], str):
            raise _bad(f"training.{name}", "a string", out[name], path)
    history = out.get("gate_history")
    if history is None:
        out["gate_history"] = ()
        return out
    if not isinstance(history, (list, tuple)):
        raise _bad("training.gate_history", f"a list of {HISTORY_ROW} rows", history, path)
    rows = []
    for i, row in enumerate(history):
        field = f"training.gate_history[{i}]"
        if not isinstance(row, (list, tuple)) or len(row) != 5:
            raise _bad(field, f"a row of five numbers {HISTORY_ROW}", row, path)
        rows.append((_integer(row[0], field + "[0]", path),
                     *(_number(v, f"{field}[{j}]", path) for j, v in enumerate(row[1:], 1))))
    out["gate_history"] = tuple(rows)
    return out
