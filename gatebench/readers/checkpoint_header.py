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
from typing import Any, Iterable, Mapping

from gatebench.errors import CheckpointError

_MAPPINGS = ("adapter_config", "base_model", "training")
_INT_FIELDS = ("step", "epoch")
_FLOAT_FIELDS = ("gate_init", "scale_min", "scale_max")
_STR_FIELDS = ("init_scheme", "data_sha256")
HISTORY_ROW = "[step, mean, std, min, max]"
# The built-in families; this module stays torch-free, so it does not import the registry.
FAMILY_NAMES = ("user", "gligen")


def _bad(field: str, expected: str, value: Any, path: Path) -> CheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(f"expected header field '{field}' to be {expected}, got "
                           f"{type(value).__name__} {shown}", path=path,
                           hint="the checkpoint's metadata is damaged; re-save it with "
                           "gatebench.checkpoint.save_checkpoint")


def parse_safetensors_header(text: str, path: Path, *,
                             families: tuple[str, ...] = FAMILY_NAMES) -> dict[str, Any]:
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
    return validate_header(header, path, families=families)


def either(names: Iterable[str]) -> str:
    """``'a' or 'b'`` / ``'a', 'b' or 'c'``: how error messages list the accepted names."""
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def validate_header(header: Mapping[str, Any], path: Path, *,
                    families: tuple[str, ...] = FAMILY_NAMES) -> dict[str, Any]:
    """Check the types of a gatebench header's top-level fields (mappings, family, version).
    ``families``: the accepted family names (gatebench.checkpoint passes the registry's)."""
    header = dict(header)
    version = header.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad("format_version", "an integer", version, path)
    family = header.get("family")
    if family is not None and family not in families:
        raise _bad("family", either(families), family, path)
    for name in _MAPPINGS:
        value = header.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise _bad(name, "a mapping", value, path)
    if header.get("training") is not None:
        header["training"] = validate_training(header["training"], path)
    if header.get("adapter_config") and family in (None, "user"):
        validate_user_config(header["adapter_config"], path)
    return header


def _positive(value: Any, field: str, path: Path) -> int:
    number = _integer(value, field, path)
    if number < 1:
        raise _bad(field, "a positive integer", value, path)
    return number


def validate_user_config(config: Mapping[str, Any], path: Path) -> None:
    """The shape fields of a user-family ``adapter_config`` (what building the adapter reads):
    widths a non-empty list of positive integers with a ``text_dim``; counts positive; the
    forward choices strings and flags booleans (their allowed values are checked on use)."""
    if "widths" in config:
        widths = config["widths"]
        if not isinstance(widths, (list, tuple)) or not widths:
            raise _bad("adapter_config.widths", "a non-empty list of UNet widths", widths, path)
        for i, width in enumerate(widths):
            _positive(width, f"adapter_config.widths[{i}]", path)
        if "text_dim" not in config:
            raise CheckpointError("expected header field 'adapter_config.text_dim' beside its "
                                  "'widths', got none", path=path, hint="the checkpoint's "
                                  "metadata is damaged; re-save it with save_checkpoint")
    for name in ("text_dim", "heads", "num_freqs"):
        if config.get(name) is not None:
            _positive(config[name], f"adapter_config.{name}", path)
    for name in ("query", "fourier", "text_proj"):
        if config.get(name) is not None and not isinstance(config[name], str):
            raise _bad(f"adapter_config.{name}", "a string", config[name], path)
    for name in ("null_slot", "box_mask"):
        if config.get(name) is not None and not isinstance(config[name], bool):
            raise _bad(f"adapter_config.{name}", "true or false", config[name], path)


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


def check_user_state(state: Mapping[str, Any], path: Path | None) -> None:
    """The tensors a user-family adapter is sized from: ``dim_{D}.*`` values are tensors and each
    ``text_proj.weight`` is a matrix (a 1-d one failed deep in shape inference). ``path``: the
    file errors name (None: a state dict given in memory)."""
    import torch  # noqa: PLC0415 (this module stays importable without torch)

    for key, value in state.items():
        bare = key.removeprefix("module.")
        if not bare.startswith("dim_"):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"expected '{key}' to be a tensor, got {type(value).__name__}",
                                  path=path, hint="the file is not a saved adapter state dict")
        if bare.endswith(".text_proj.weight") and value.ndim != 2:
            raise CheckpointError(f"expected '{key}' to be a 2-d weight matrix, got shape "
                                  f"{tuple(value.shape)}", path=path,
                                  hint="the file is not a saved adapter state dict")
        if value.is_complex():
            raise CheckpointError(f"expected real-valued tensors, got complex '{key}'",
                                  path=path, hint="the file is not a saved adapter state dict")


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
