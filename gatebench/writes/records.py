"""Where the adapter wrote, per generated image: the sidecar file beside each cached PNG.

The diagnostics (adapters/write_meter.py) are measured while an image is generated, so they are
cached with it: ``<image>.writes.json`` holds the four measurements, their reasons, the
early/late splits and ``map``, the residual's energy density (32x32, 0-255, base64), written
atomically next to the PNG and before it (a cached PNG has its record). Not a second image file,
so nothing that lists a folder's images takes it for one. A cached image without it (made before
it existed, or by another tool) scores with the diagnostics "not computed", never with a
default. Torch-free.
"""
from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gatebench.files import atomic_write_bytes

_log = logging.getLogger(__name__)

FIELDS = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")
SPLITS = ("effect_in_boxes_early", "effect_in_boxes_late", "effect_lift_early",
          "effect_lift_late")
ADAPTER_OFF = "gate scale 0: the adapter is off"
NOT_RECORDED = "no write diagnostics recorded with this image (made elsewhere or before they existed)"


def sidecar(image: Path) -> Path:
    return image.with_name(f"{image.stem}.writes.json")


def write_sidecars(image: Path, record: Mapping[str, Any], density: np.ndarray | None) -> None:
    """The record, with the density map (max 1) as 8-bit base64 under ``map``, atomically."""
    document = dict(record)
    if density is not None:
        cells = np.clip(np.asarray(density, dtype=np.float64) * 255 + 0.5, 0, 255)
        document["map"] = {"shape": list(cells.shape), "uint8_base64": base64.b64encode(
            cells.astype(np.uint8).tobytes()).decode("ascii")}
    atomic_write_bytes(sidecar(image), json.dumps(document, sort_keys=True).encode())


def read_map(image: Path) -> np.ndarray | None:
    """The write map (H x W, uint8) recorded with ``image``; None when there is none."""
    record = read_record(image)
    cells = (record or {}).get("map")
    if not isinstance(cells, dict):
        return None
    try:
        shape = tuple(int(v) for v in cells["shape"])
        data = np.frombuffer(base64.b64decode(cells["uint8_base64"]), dtype=np.uint8)
        return data.reshape(shape)
    except (TypeError, KeyError, ValueError):
        return None


def read_record(image: Path) -> dict[str, Any] | None:
    """The image's write record, or None (absent; unreadable: a one-line warning, and it is
    rewritten when the image is next generated)."""
    path = sidecar(image)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        _log.warning("ignoring unreadable write diagnostics %s (%s)", path, type(exc).__name__)
        return None
    if not isinstance(record, dict) or not all(
            record.get(k) is None or isinstance(record.get(k), (int, float)) for k in FIELDS):
        _log.warning("ignoring malformed write diagnostics %s", path)
        return None
    return record


def sample_columns(record: Mapping[str, Any] | None, gate_scale: float | None) -> dict[str, Any]:
    """samples.jsonl columns: each value (NaN if not computed), its reason, and the 0/1
    denominators the metric table aggregates by (``write_measured``, ``write_located``,
    ``kappa_measured``)."""
    if record is None:
        reason = ADAPTER_OFF if gate_scale == 0 else NOT_RECORDED
        record = {f"{k}_reason": reason for k in FIELDS}
    out: dict[str, Any] = {}
    for name in (*FIELDS, *SPLITS):
        value = record.get(name)
        out[name] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) \
            else float("nan")
    for name in FIELDS:
        out[f"{name}_reason"] = None if out[name] == out[name] else (
            record.get(f"{name}_reason") or NOT_RECORDED)
    out["write_measured"] = int(out["effect_norm"] == out["effect_norm"])
    out["write_located"] = int(out["effect_in_boxes"] == out["effect_in_boxes"]
                               and out["effect_lift"] == out["effect_lift"])
    out["kappa_measured"] = int(out["box_attention_kappa"] == out["box_attention_kappa"])
    return out
