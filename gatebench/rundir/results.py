"""results.json: its schema version, what it records, the overall verdict rule, the writes.

The run folder (results.json + samples.jsonl) is owned by ``gatebench.rundir``: this module
writes results.json, ``rundir.samples`` reads and writes samples.jsonl, ``rundir.saved`` reads a
folder back, ``rundir.schema`` checks what it reads. compare.json is ``gatebench.compare``'s
(``write_verdict``); this module reads its verdict as one part of the run's verdict.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from gatebench import __version__
from gatebench.files import atomic_write_text, file_sha256

if TYPE_CHECKING:    # annotations only: rundir/ reads what the stages made, it imports none of them
    import torch

    from gatebench.gates import GateReport
    from gatebench.protocol import Protocol
    from gatebench.verdict import TargetRow

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


def findings_verdict(severities: Iterable[str]) -> str:
    """The gate part's rule: ``fail`` when a finding fails, ``warn`` when one warns."""
    found = set(severities)
    return "fail" if "fail" in found else "warn" if "warn" in found else "pass"


def _passed(target: Any) -> bool:
    return bool(target["passed"] if isinstance(target, Mapping) else target.passed)


def decide_verdict(targets: Sequence[Any], gate_verdict: str = "pass", *,
                   regression: Mapping[str, Any] | None = None,
                   sequential: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """THE verdict of a run, the only place it is decided: the run fails when a target fails,
    a gate check fails, (with a baseline) a metric regressed, or (``--until-decided``) the
    confidence sequences decided FAIL; warnings never fail it.

    Returns ``{"verdict", "parts", "reasons"}``: results.json records it, and the terminal,
    report.md, LaTeX, HTML and the exit code read it. ``targets``: TargetRows or their dicts;
    ``regression``: compare.json's document; ``sequential``: results.json's ``sequential``.
    """
    rows = [t.to_dict() if not isinstance(t, Mapping) else t for t in targets]
    failed = [t for t in rows if not _passed(t)]
    parts: dict[str, dict[str, str]] = {
        "targets": {"status": "fail" if failed else "pass",
                    "reason": f"{len(rows) - len(failed)} of {len(rows)} targets pass" + (
                        " (failing: " + ", ".join(dict.fromkeys(t["metric"] for t in failed))
                        + ")" if failed else "")},
        "gates": {"status": gate_verdict, "reason": f"gate health {gate_verdict}"}}
    if regression is not None:
        parts["regression"] = _regression_part(regression)
    if sequential is not None:
        decided = sequential.get("decided")
        parts["sequential"] = {"status": str(decided or "undecided"),
                               "reason": str(sequential.get("reason", ""))}
    reasons = [p["reason"] for p in parts.values() if p["status"] == "fail"]
    return {"verdict": "fail" if reasons else "pass", "parts": parts, "reasons": reasons}


def _regression_part(regression: Mapping[str, Any]) -> dict[str, str]:
    """compare.json's verdict as a part: a regression, or runs that cannot be paired, fail."""
    if regression.get("verdict") == "not_comparable":
        return {"status": "fail", "reason": "not comparable with the baseline: "
                + "; ".join(map(str, regression.get("reasons", [])))}
    regressed = [r for r in regression.get("rows", []) if r.get("status") == "regression"]
    if regression.get("verdict") == "regression":
        return {"status": "fail", "reason": "regression vs the baseline: " + "; ".join(
            f"{r['metric']} at gate scale {float(r['gate_scale']):g} ({float(r['diff']):+.4g})"
            for r in regressed)}
    return {"status": "pass", "reason": "no regression vs the baseline"}


def record_verdict(results: dict[str, Any], decision: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's verdict fields from ``decide_verdict``: ``verdict`` (the stable name CI
    reads), ``verdict_parts`` and ``verdict_reasons``."""
    results["verdict"] = decision["verdict"]
    results["verdict_parts"] = dict(decision["parts"])
    results["verdict_reasons"] = list(decision["reasons"])
    return results


def verdict_of(results: Mapping[str, Any],
               comparison: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A saved run's decision: its recorded parts, or (results.json written before gatebench
    recorded them) the same rule over what it holds. ``comparison``: a compare.json beside it."""
    if "verdict_parts" in results and (comparison is None or "regression" in
                                       results["verdict_parts"]):
        return {"verdict": results["verdict"], "parts": results["verdict_parts"],
                "reasons": results.get("verdict_reasons", [])}
    gates = findings_verdict(str(f.get("severity")) for f in results.get("gate_findings") or [])
    return decide_verdict(results.get("targets", []), gates, regression=comparison,
                          sequential=results.get("sequential"))


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


def build_results(*, protocol: Protocol, gate_report: GateReport, rows: list[dict[str, Any]],
                  targets: Sequence[TargetRow], models: dict[str, Any], layouts_info: str,
                  n_layouts: int, timings: dict[str, Any], generation: dict[str, Any],
                  command: str, device: str, dtype: torch.dtype, ceiling: dict[str, Any] | None,
                  layout_ids: Sequence[str]) -> dict[str, Any]:
    """The results.json document (its shape: rundir/schema.py), without its verdict: the caller
    records ``decide_verdict``'s once every part (regression, sequential) is known."""
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
    }
