"""Safe, format-aware checkpoint reading: just the gates and metadata, memory-mapped.

Three formats are recognised:

* ``user``: the user's bare ``torch.save(state_dict)`` of per-width adapters
  (``dim_{D}.gated_attn.gate``; optional DDP ``module.`` prefix), see ARCHITECTURE.md ("The user's formats");
* ``gligen``: diffusers / original GLIGEN fuser weights (``...fuser.alpha_attn``/``alpha_dense``);
* ``gatebench``: our own file: a dict ``{"format": "gatebench-adapter", "format_version", "family",
  "adapter_config", "base_model", "training", "state_dict"}`` of plain types and tensors, loadable
  with ``torch.load(weights_only=True)``; or a ``.safetensors`` file whose metadata key
  ``gatebench`` holds the same header as JSON.

``torch.load`` is always called with ``weights_only=True``: a pickle that would run code is refused
and nothing in it runs. Reading is memory-mapped, so only the gate tensors are paged in.
"""
from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from gatebench.readers.checkpoint_header import (check_user_state, parse_safetensors_header,
                                         validate_header)
from gatebench.files import cache_dir, file_sha256  # noqa: F401 (re-exported)
from gatebench.errors import CheckpointError, UnsafeCheckpointError

GATEBENCH_FORMAT = "gatebench-adapter"
GATEBENCH_FORMAT_VERSION = 1

_USER_GATE = re.compile(r"^(?:module\.)?dim_(\d+)\.gated_attn\.gate$")
_GLIGEN_GATE = re.compile(r"^(?:module\.)?(.*\.)?(fuser)\.(alpha_attn|alpha_dense)$")


@dataclass(frozen=True)
class GateEntry:
    """One gate: its raw value, its effect tanh(raw) and whether its output projection is zero."""

    key: str
    layer: str
    kind: str                     # "gate" (user family), "alpha_attn" or "alpha_dense" (gligen)
    width: int | None
    raw: float
    out_proj_key: str | None = None
    out_proj_zero: bool | None = None   # None: the projection is not in the file

    @property
    def effective(self) -> float:
        return math.tanh(self.raw) if math.isfinite(self.raw) else float("nan")


@dataclass(frozen=True)
class TrainingMeta:
    """What the training code recorded; every field optional for foreign checkpoints."""

    step: int | None = None
    epoch: int | None = None
    init_scheme: str | None = None
    gate_init: float | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    data_sha256: str | None = None
    uncond_boxes: str | None = None     # what a caption-dropped sample's adapter got (>= 0.2)
    gate_history: tuple[tuple[int, float, float, float, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "TrainingMeta":
        raw = dict(raw or {})
        history = tuple(tuple(float(v) if i else int(v) for i, v in enumerate(row))
                        for row in raw.get("gate_history", ()))
        known = {k: raw.get(k) for k in ("step", "epoch", "init_scheme", "gate_init", "scale_min",
                                         "scale_max", "data_sha256", "uncond_boxes")}
        return cls(**known, gate_history=history)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything `gates` needs from one checkpoint file, without the adapter weights."""

    path: Path
    sha256: str
    size_bytes: int
    format: str                    # "user", "gligen" or "gatebench"
    family: str                    # "user" or "gligen"
    gates: tuple[GateEntry, ...]
    training: TrainingMeta = field(default_factory=TrainingMeta)
    adapter_config: Mapping[str, Any] = field(default_factory=dict)
    base_model: Mapping[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted({g.width for g in self.gates if g.width is not None}))

    @property
    def reference_uncond(self) -> str:
        """The CFG treatment this adapter was made for (``uncond_boxes = "reference"``): the
        user's inference grounds both halves; diffusers' GLIGEN pipeline gives the unconditional
        half null objects; a gatebench checkpoint says how its caption-dropped samples trained
        (before gatebench 0.2 its trainer switched the adapter off for them)."""
        if self.format == "gatebench" and self.family == "user":
            return self.training.uncond_boxes or "off"
        return {"user": "grounded", "gligen": "null"}[self.family]


def _check_readable(path: Path) -> int:
    if not path.exists():
        raise CheckpointError("expected a checkpoint file, got a path that does not exist",
                              path=path, hint="check the path")
    if path.is_dir():
        raise CheckpointError("expected a checkpoint file, got a directory", path=path,
                              hint="pass the .pt/.safetensors file inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("expected a checkpoint, got an empty file (0 bytes)", path=path,
                              hint="the save was probably interrupted; use an earlier checkpoint")
    return size


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
    _check_readable(path)
    is_zip = zipfile.is_zipfile(path)
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
        raise CheckpointError(f"expected a PyTorch checkpoint, got a file torch cannot read as "
                              f"one ({_torch_reason(exc)})", path=path,
                              hint="pass the file torch.save(state_dict) wrote, or a "
                              ".safetensors file") from None
    except Exception as exc:  # noqa: BLE001 - the reader boundary: torch's parser raises anything
        kind = "a truncated or corrupt zip archive" if is_zip else "a file that is not a PyTorch checkpoint"
        raise CheckpointError(f"expected a PyTorch checkpoint, got {kind} ({_torch_reason(exc)})",
                              path=path, hint="pass the file torch.save(state_dict) wrote, or a "
                              ".safetensors file") from None


class _SafetensorsView(Mapping[str, torch.Tensor]):
    """A lazy mapping over a .safetensors file: tensors are read only when accessed."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open
        from safetensors import SafetensorError

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
        return view, parse_safetensors_header(text, path) if text is not None else {}
    obj = torch_load_safe(path)
    if isinstance(obj, Mapping) and obj.get("format") == GATEBENCH_FORMAT:
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError("expected a 'state_dict' mapping in a gatebench checkpoint, "
                                  f"got {type(state).__name__}", path=path)
        header = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer", "resume")}
        return state, validate_header(header, path)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "module", "adapter"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner, {}
        return obj, {}
    raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got "
                          f"{type(obj).__name__}", path=path)


def _scalar(tensor: Any, key: str, path: Path) -> float:
    if not isinstance(tensor, torch.Tensor) or tensor.numel() < 1:
        got = (f"an empty tensor of shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor)
               else type(tensor).__name__)
        raise CheckpointError(f"expected gate '{key}' to be a tensor with one value, got {got}",
                              path=path)
    return float(tensor.detach().reshape(-1)[0].float())


def _is_zero(state: Mapping[str, Any], keys: Iterable[str], path: Path) -> bool | None:
    present = [k for k in keys if k in state]
    if not present:
        return None
    for key in present:
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"expected '{key}' to be a tensor, got "
                                  f"{type(state[key]).__name__}", path=path,
                                  hint="the file is not a saved adapter state dict")
    return all(bool((state[k].float() == 0).all()) for k in present)


def find_gates(state: Mapping[str, Any], path: Path) -> tuple[str, tuple[GateEntry, ...]]:
    """Recognise the adapter family from its keys and read every gate."""
    keys = list(state.keys())
    gates: list[GateEntry] = []
    for key in keys:
        match = _USER_GATE.match(key)
        if match:
            width = int(match.group(1))
            base = key[: -len("gate")]
            proj = [base + "to_out.weight", base + "to_out.bias"]
            gates.append(GateEntry(key=key, layer=f"dim_{width}", kind="gate", width=width,
                                   raw=_scalar(state[key], key, path), out_proj_key=proj[0],
                                   out_proj_zero=_is_zero(state, proj, path)))
    if gates:
        return "user", tuple(sorted(gates, key=lambda g: (g.width or 0, g.key)))
    for key in keys:
        match = _GLIGEN_GATE.match(key)
        if match:
            prefix = key[: -len(match.group(3))]
            kind = match.group(3)
            if kind == "alpha_attn":
                proj = [prefix + "attn.to_out.0.weight", prefix + "attn.to_out.0.bias",
                        prefix + "attn.to_out.weight", prefix + "attn.to_out.bias"]
                width_key = prefix + "attn.to_q.weight"
            else:
                proj = [prefix + "ff.net.2.weight", prefix + "ff.net.2.bias"]
                width_key = prefix + "ff.net.2.weight"
            width_tensor = state.get(width_key)
            width = (int(width_tensor.shape[0]) if isinstance(width_tensor, torch.Tensor)
                     and width_tensor.ndim >= 1 else None)
            layer = prefix.rstrip(".").removeprefix("module.")
            gates.append(GateEntry(key=key, layer=layer, kind=kind, width=width,
                                   raw=_scalar(state[key], key, path),
                                   out_proj_key=next((p for p in proj if p in state), None),
                                   out_proj_zero=_is_zero(state, proj, path)))
    if gates:
        return "gligen", tuple(gates)
    sample = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
    raise CheckpointError(
        f"expected adapter gates (keys like 'dim_640.gated_attn.gate' or '...fuser.alpha_attn'), "
        f"got {len(keys)} keys with none of them ({sample or 'empty'})", path=path,
        hint="is this the base model or an optimizer state rather than the adapter?")


def inspect_checkpoint(path: str | Path, *, sha256: str | None = None) -> CheckpointInfo:
    """Read a checkpoint's gates and metadata (memory-mapped) and hash the file."""
    path = Path(path)
    state, header = read_raw(path)
    check_user_state(state, path)
    family, gates = find_gates(state, path)
    if header:
        if header.get("format_version", 1) > GATEBENCH_FORMAT_VERSION:
            raise CheckpointError(f"expected gatebench checkpoint format version <= "
                                  f"{GATEBENCH_FORMAT_VERSION}, got {header['format_version']}",
                                  path=path, hint="upgrade gatebench")
        fmt = "gatebench"
        family = header.get("family", family)
    else:
        fmt = family
    return CheckpointInfo(path=path, sha256=sha256 or file_sha256(path),
                          size_bytes=path.stat().st_size, format=fmt, family=family, gates=gates,
                          training=TrainingMeta.from_dict(header.get("training")),
                          adapter_config=_forward_config(family, header, state),
                          base_model=dict(header.get("base_model") or {}))


def _forward_config(family: str, header: Mapping[str, Any], state: Mapping[str, Any]) -> dict:
    """How this checkpoint's adapter will be run: every forward choice and the reference it
    follows. Bare files follow their family's reference; gatebench files say what they are."""
    from gatebench.adapters.gligen import GLIGEN_CONFIG
    from gatebench.adapters.user import AdapterSet, resolve_config

    recorded = dict(header.get("adapter_config") or {})
    if family == "gligen":
        return {**GLIGEN_CONFIG, **recorded}
    try:
        return resolve_config(recorded) if recorded.get("widths") else \
            AdapterSet.config_from_state(state)
    except CheckpointError:
        return recorded     # gates-only files: `gates` works, loading the adapter says why not


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """DDP saves keys as ``module.x``; the adapters expect ``x``."""
    return {k.removeprefix("module."): v for k, v in state.items()}


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
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(tmp), metadata={"gatebench": json.dumps(header)})
    else:
        torch.save({**header, "state_dict": tensors, **dict(extra or {})}, tmp)
    tmp.replace(path)
    return path
