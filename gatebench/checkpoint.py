"""Safe, format-aware checkpoint reading: just the gates and metadata, memory-mapped.

Formats recognised:

* each adapter family's bare files (gatebench.adapters.families.FAMILIES, in order: ``user``,
  the user's ``torch.save(state_dict)`` of per-width adapters ``dim_{D}.gated_attn.gate``;
  ``gligen``, diffusers / original GLIGEN fuser weights ``...fuser.alpha_attn``/``alpha_dense``);
  each family module says how it recognises its keys and reads its gates;
* ``gatebench``: our own file: a dict ``{"format": "gatebench-adapter", "format_version", "family",
  "adapter_config", "base_model", "training", "state_dict"}`` of plain types and tensors, loadable
  with ``torch.load(weights_only=True)``; or a ``.safetensors`` file whose metadata key
  ``gatebench`` holds the same header as JSON.

``torch.load`` is always called with ``weights_only=True``: a pickle that would run code is refused
and nothing in it runs. Reading is memory-mapped, so only the gate tensors are paged in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from gatebench.adapters.families import FAMILIES, family_of, recognise
from gatebench.adapters.types import CheckpointInfo, GateEntry, TrainingMeta
from gatebench.errors import CheckpointError, UnsafeCheckpointError
from gatebench.files import atomic_output, file_sha256
from gatebench.readers.checkpoint_header import parse_safetensors_header, validate_header

if TYPE_CHECKING:
    from gatebench.adapters.registry import AdapterRuntime
    from gatebench.models.base import BaseModel

GATEBENCH_FORMAT = "gatebench-adapter"
GATEBENCH_FORMAT_VERSION = 1

__all__ = ["GATEBENCH_FORMAT", "GATEBENCH_FORMAT_VERSION", "TORN", "UnreadableCheckpoint",
           "adapter_state", "find_gates", "inspect_checkpoint", "load_adapter", "read_raw",
           "save_checkpoint", "strip_module_prefix", "tensors_digest", "tensors_digest_of",
           "torch_load_safe", "try_inspect_checkpoint"]


def _check_readable(path: Path) -> int:
    if not path.exists():
        raise CheckpointError("expected a checkpoint file, got a path that does not exist",
                              path=path, hint="check the path")
    if path.is_dir():
        raise CheckpointError("expected a checkpoint file, got a directory", path=path,
                              hint="pass the .pt/.safetensors file inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"expected a checkpoint, got an empty file (0 bytes) — {TORN}",
                              path=path, hint=TORN_HINT)
    return size


# A trainer that torch.save()s straight to the final name (the user's) leaves a partial file there
# while it writes, and for good if the save is interrupted: said as such, never "not a checkpoint".
TORN = "truncated — still being written, or its save was interrupted"
TORN_HINT = ("wait for the save to finish (gatebench reads it again next time), or use an "
             "earlier checkpoint")
_ZIP_START = b"PK\x03\x04"        # torch.save's zip: local file headers first, end record last
_PICKLE_START = (b"\x80", b"\x8a")  # the legacy format: a pickle protocol byte, or its magic number


def _truncated(path: Path, is_zip: bool, exc: BaseException | None = None) -> bool:
    """The start of a torch.save file without its end: a zip whose end record is missing, or a
    legacy pickle that ran out of bytes."""
    with path.open("rb") as f:
        head = f.read(4)
    if head == _ZIP_START:
        return not is_zip
    ran_out = exc is not None and (isinstance(exc, EOFError) or any(
        word in str(exc) for word in ("Ran out of input", "EOF", "truncated")))
    return head[:1] in _PICKLE_START and ran_out


def _torch_reason(exc: BaseException) -> str:
    """The part of a torch.load failure worth showing. torch's weights-only message is six lines
    that end in advice to pass ``weights_only=False`` (which would run the pickle's code): only
    the unpickler's own reason is kept, never that advice."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if found:
        text = found.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "weights_only" in first:
        first = ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def torch_load_safe(path: Path, *, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError.

    This is the boundary for checkpoint bytes: torch's weights-only unpickler raises whatever
    its parser hits on foreign bytes (IndexError, KeyError, UnpicklingError, ...), so every
    ``Exception`` from the load itself is re-raised typed, naming the file."""
    size = _check_readable(path)
    is_zip = zipfile.is_zipfile(path)
    if _truncated(path, is_zip):
        raise CheckpointError(f"expected a PyTorch checkpoint, got a {TORN} ({size} bytes: the "
                              "start of a zip archive without its end)", path=path, hint=TORN_HINT)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"Unsupported global: GLOBAL ([^\s]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"refused to load: the file is a pickle that wants to run code or build arbitrary "
                f"objects{what}; nothing in it was executed", path=path,
                hint="re-save it as a plain state dict or .safetensors from trusted code") from None
        if _truncated(path, is_zip, exc):
            raise CheckpointError(f"expected a PyTorch checkpoint, got a {TORN} ({size} bytes: "
                                  f"{_torch_reason(exc)})", path=path, hint=TORN_HINT) from None
        raise CheckpointError(f"expected a PyTorch checkpoint, got a file torch cannot read as "
                              f"one ({_torch_reason(exc)})", path=path,
                              hint="pass the file torch.save(state_dict) wrote, or a "
                              ".safetensors file") from None
    except Exception as exc:  # noqa: BLE001 - the reader boundary: torch's parser raises anything
        if _truncated(path, is_zip, exc):
            raise CheckpointError(f"expected a PyTorch checkpoint, got a {TORN} ({size} bytes: "
                                  f"{_torch_reason(exc)})", path=path, hint=TORN_HINT) from None
        kind = "a truncated or corrupt zip archive" if is_zip else "a file that is not a PyTorch checkpoint"
        raise CheckpointError(f"expected a PyTorch checkpoint, got {kind} ({_torch_reason(exc)})",
                              path=path, hint="pass the file torch.save(state_dict) wrote, or a "
                              ".safetensors file") from None


class _SafetensorsView(Mapping[str, torch.Tensor]):
    """A lazy mapping over a .safetensors file: tensors are read only when accessed."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        _check_readable(path)
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError, OverflowError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise CheckpointError(f"expected a .safetensors file, got an unreadable one ({reason})",
                                  path=path) from None
        self._keys = list(self._file.keys())
        self.metadata: dict[str, str] = dict(self._file.metadata() or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_raw(path: str | Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Return (state mapping, gatebench header or {}) for any supported file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        view = _SafetensorsView(path)
        text = view.metadata.get("gatebench")
        return view, (parse_safetensors_header(text, path, families=tuple(FAMILIES))
                      if text is not None else {})
    obj = torch_load_safe(path)
    if isinstance(obj, Mapping) and obj.get("format") == GATEBENCH_FORMAT:
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError("expected a 'state_dict' mapping in a gatebench checkpoint, "
                                  f"got {type(state).__name__}", path=path)
        header = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer", "resume")}
        return state, validate_header(header, path, families=tuple(FAMILIES))
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "module", "adapter"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner, {}
        return obj, {}
    raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got "
                          f"{type(obj).__name__}", path=path)


def find_gates(state: Mapping[str, Any], path: Path) -> tuple[str, tuple[GateEntry, ...]]:
    """Recognise the adapter family from its keys (the first in FAMILIES) and read every gate."""
    keys = list(state.keys())
    family = recognise(keys)
    if family is not None:
        return family.name, family.read_gates(state, path)
    sample = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
    examples = " or ".join(f"'{f.example_key}'" for f in FAMILIES.values())
    raise CheckpointError(
        f"expected adapter gates (keys like {examples}), "
        f"got {len(keys)} keys with none of them ({sample or 'empty'})", path=path,
        hint="is this the base model or an optimizer state rather than the adapter?")


def inspect_checkpoint(path: str | Path, *, sha256: str | None = None) -> CheckpointInfo:
    """Read a checkpoint's gates and metadata (memory-mapped) and hash the file."""
    path = Path(path)
    state, header = read_raw(path)
    for known in FAMILIES.values():
        known.check_state(state, path)
    family, gates = find_gates(state, path)
    found = family
    if header:
        if header.get("format_version", 1) > GATEBENCH_FORMAT_VERSION:
            raise CheckpointError(f"expected gatebench checkpoint format version <= "
                                  f"{GATEBENCH_FORMAT_VERSION}, got {header['format_version']}",
                                  path=path, hint="upgrade gatebench")
        fmt = "gatebench"
        family = header.get("family", family)
    else:
        fmt = family
    # how the adapter will be run (every forward choice, the reference it follows, the CFG
    # treatment it was made for), as its family says: the header's family, else its keys'
    rule = FAMILIES.get(family) or FAMILIES[found]
    info = CheckpointInfo(path=path, sha256=sha256 or file_sha256(path),
                          size_bytes=path.stat().st_size, format=fmt, family=family, gates=gates,
                          training=TrainingMeta.from_dict(header.get("training")),
                          adapter_config=rule.forward_config(header, state),
                          base_model=dict(header.get("base_model") or {}))
    return dataclasses.replace(info, reference_uncond=rule.reference_uncond(info))


def tensors_digest(state: Mapping[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (``module.`` prefixes dropped):
    two files of one state dict agree although their bytes differ (the user's final file repeats
    its last checkpoint's tensors in a new zip), and two files with equal gates but different
    weights do not."""
    digest = hashlib.sha256()
    for key in sorted(state.keys(), key=str):
        value = state[key]
        digest.update(str(key).removeprefix("module.").encode())
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")  # no copy
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def tensors_digest_of(path: str | Path) -> str | None:
    """``tensors_digest`` of a file; None when it can no longer be read (a rerun of the trainer
    is overwriting it): identity then rests on the gates alone."""
    try:
        state, _ = read_raw(Path(path))
    except CheckpointError:
        return None
    return tensors_digest(state)


@dataclass(frozen=True)
class UnreadableCheckpoint:
    """A checkpoint file that exists but could not be read (a partial save, a foreign or unsafe
    file): listed beside the judged ones, so one such file never sinks its folder."""

    path: Path
    message: str        # the reader's one line (expected / got / hint)
    truncated: bool     # a partial torch.save: still being written, or its save was interrupted


def try_inspect_checkpoint(path: str | Path) -> CheckpointInfo | UnreadableCheckpoint:
    """``inspect_checkpoint``, or what made the file unreadable. A path that does not exist (or
    is a folder) is still an error: that is a mistyped argument, not a file in a folder."""
    path = Path(path)
    if not path.is_file():
        _check_readable(path)
    try:
        return inspect_checkpoint(path)
    except CheckpointError as exc:
        return UnreadableCheckpoint(path, exc.render(), TORN in exc.message)


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """DDP saves keys as ``module.x``; the adapters expect ``x``."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def adapter_state(path: str | Path) -> dict[str, Any]:
    """The adapter's tensors under the names its modules use (any supported file)."""
    raw, _ = read_raw(Path(path))
    return strip_module_prefix(raw)


def load_adapter(path: str | Path, base: BaseModel, info: CheckpointInfo | None = None) -> AdapterRuntime:
    """A checkpoint's adapter attached to ``base`` by its family's runtime. It lives with the reader, not in adapters/, because it reads the file: adapters/
    never imports gatebench.checkpoint (no package-level cycle)."""
    info = info or inspect_checkpoint(path)
    return family_of(info.family, info.path).runtime(info, adapter_state(path), base)


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], *, family: str,
                    adapter_config: Mapping[str, Any], base_model: Mapping[str, Any] | None = None,
                    training: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a gatebench checkpoint atomically (.pt, or .safetensors by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": GATEBENCH_FORMAT, "format_version": GATEBENCH_FORMAT_VERSION,
              "family": family, "adapter_config": dict(adapter_config),
              "base_model": dict(base_model or {}), "training": dict(training or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(tensors, str(tmp), metadata={"gatebench": json.dumps(header)})
        else:
            torch.save({**header, "state_dict": tensors, **dict(extra or {})}, tmp)
    return path
