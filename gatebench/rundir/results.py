"""results.json: its schema version, what it records, the overall verdict rule, the writes.

The run folder (results.json + samples.jsonl + compare.json) is owned by ``gatebench.rundir``:
this module writes results.json, ``rundir.samples`` reads and writes samples.jsonl,
``rundir.saved`` reads a folder back, ``rundir.schema`` checks what it reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Sequence

from gatebench import __version__
from gatebench.files import atomic_write_text, file_sha256

SCHEMA_VERSION = 2   # 2 (gatebench 0.2): forward configs, references, per-adapter uncond_boxes
SUPPORTED_SCHEMA = (1, 2)
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "torchmetrics",
            "ultralytics", "numpy", "pandas", "scipy", "faster-coco-eval")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "gatebench": __version__}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def overall_verdict(targets: Iterable[Any], gate_verdict: str = "pass",
                    regressions: bool = False) -> str:
    """THE rule: a run fails when a target fails, a gate check fails, or (with a baseline) a
    metric regressed; warnings never fail it. ``targets``: objects or dicts with ``passed``."""
    failed = any(not (t["passed"] if isinstance(t, dict) else t.passed) for t in targets)
    return "fail" if failed or gate_verdict == "fail" or regressions else "pass"


def layout_ids_sha256(layout_ids: Sequence[str]) -> str:
    """Which layouts, in which order: what pairs two runs' records."""
    return hashlib.sha256("\n".join(layout_ids).encode()).hexdigest()


def exit_code(verdict: str) -> int:
    return 1 if verdict == "fail" else 0


def plain(value: Any) -> Any:
    """Tuples -> lists, keys -> str: what JSON can hold."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, Any]) -> Path:
    return atomic_write_text(Path(path), json.dumps(document, indent=2, ensure_ascii=False,
                                                    default=str))


def build_results(*, protocol: Any, gate_report: Any, rows: list[dict[str, Any]],
                  targets: Sequence[Any], models: dict[str, Any], layouts_info: dict[str, Any],
                  n_layouts: int, timings: dict[str, Any], generation: dict[str, Any],
                  command: str, device: str, dtype: Any, ceiling: dict[str, Any] | None,
                  layout_ids: Sequence[str], infos: Sequence[Any] = ()) -> dict[str, Any]:
    """The results.json document (its shape: rundir/schema.py); ``infos`` is accepted for callers
    of the pre-0.2 signature and unused: the checkpoints come from ``gate_report``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "seed": protocol.seed,
        "n_layouts": n_layouts,
        "layout_ids_sha256": layout_ids_sha256(layout_ids),
        "protocol": plain(dataclasses.asdict(protocol)),
        "protocol_sha256": file_sha256(Path(protocol.source)) if protocol.source and
        Path(protocol.source).is_file() else None,
        "versions": package_versions(),
        "device": device, "dtype": str(dtype).removeprefix("torch."),
        "models": models, "layouts": layouts_info,
        "checkpoints": [{**c, "gate_verdict": gate_report.verdict}
                        for c in gate_report.to_json()["checkpoints"]],
        "gate_findings": [f.to_dict() for f in gate_report.findings],
        "results": rows,
        "real_images_ceiling": ceiling,
        "targets": [t.to_dict() for t in targets],
        "generation": generation,
        "timings": timings,
        "verdict": overall_verdict(targets, gate_report.verdict),
    }
