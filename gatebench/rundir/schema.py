"""The boundary for a saved run's results.json: the shape `report` and `compare` read, checked
once at load time.

The renderers index results.json directly (``results["protocol"]["name"]``, ``row["metrics"]``):
a hand-edited or foreign file whose ``results`` is a string or whose ``protocol`` is null must be
one error naming the file and the field, not a TypeError deep inside a Markdown table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from gatebench.errors import GatebenchError
from gatebench.protocol import COMPARISONS

# field -> kind; "?" prefix: may be missing or null. Kinds: int, num, str, bool, dict, list, any.
TOP: dict[str, str] = {
    "schema_version": "int", "seed": "int", "n_layouts": "int", "protocol": "dict",
    "results": "list", "targets": "list", "checkpoints": "list", "created": "str",
    "versions": "dict", "device": "str", "models": "dict", "verdict": "str",
    "layout_ids_sha256": "str", "protocol_sha256": "?str", "command": "?str",
    "generation": "?dict", "timings": "?dict", "gate_findings": "?list",
    "real_images_ceiling": "?dict", "dtype": "?str", "max_layouts": "?int",
    "sequential": "?dict", "verdict_parts": "?dict", "verdict_reasons": "?list"}
# rundir.results.decide_verdict's parts (absent before gatebench recorded them)
VERDICT_PART: dict[str, str] = {"status": "str", "reason": "str"}
PROTOCOL: dict[str, str] = {"name": "str", "generation": "dict", "scoring": "dict",
                            "data": "?dict"}
ROW: dict[str, str] = {"checkpoint": "str", "gate_scale": "num", "metrics": "dict",
                       "not_computed": "?dict", "label": "?str", "n_images": "?int",
                       "nonfinite_images": "?int", "checkpoint_sha256": "?str"}
METRIC: dict[str, str] = {"value": "?num", "ci_low": "?num", "ci_high": "?num", "n": "?int"}
TARGET: dict[str, str] = {"checkpoint": "str", "gate_scale": "?num", "metric": "str",
                          "op": "str", "threshold": "num", "value": "?num", "ci_low": "?num",
                          "ci_high": "?num", "n": "?int", "passed": "bool", "computed": "bool",
                          "ci_clear": "?bool", "note": "?str"}
CHECKPOINT: dict[str, str] = {"path": "str", "step": "?int", "epoch": "?int", "stats": "?dict",
                              "findings": "?list", "gates": "?list"}
FINDING: dict[str, str] = {"code": "str", "severity": "str", "message": "str"}
# `run --until-decided` (absent on an ordinary run): how the confidence sequences stopped it
SEQUENTIAL: dict[str, str] = {
    "alpha": "num", "alpha_each": "num", "decisions": "int", "split": "str",
    "round_layouts": "int", "n_layouts": "int", "max_layouts": "int", "stopped_early": "bool",
    "decided": "?str", "reason": "?str", "order": "str", "set_level": "list", "rounds": "list",
    "rows": "list"}
SEQUENTIAL_ROUND: dict[str, str] = {"n_layouts": "int", "decided": "?str"}
SEQUENTIAL_ROW: dict[str, str] = {
    "checkpoint": "str", "gate_scale": "?num", "metric": "str", "op": "str", "threshold": "num",
    "lower": "?num", "upper": "?num", "n": "int", "decision": "?str", "decidable": "bool",
    "why": "str"}
DECISIONS = ("pass", "fail")      # or null: not decided
_NAMES = {"int": "an integer", "num": "a number", "str": "a string", "bool": "true or false",
          "dict": "an object", "list": "a list", "any": "a value"}


def _fits(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":       # a float may be NaN ("not measured"); an int must fit a float
        return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                            and abs(value) < 1e308)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def _check(obj: dict[str, Any], spec: dict[str, str], where: str, path: Path) -> None:
    for key, kind in spec.items():
        optional = kind.startswith("?")
        kind = kind.lstrip("?")
        name = f"{where}.{key}" if where else key
        if key not in obj or obj[key] is None:
            if optional:
                continue
            got = "null" if key in obj else "nothing"
            raise GatebenchError(f"expected results.json field '{name}' to be {_NAMES[kind]}, "
                                 f"got {got}", path=path, hint="re-run `gatebench run`, or restore "
                                 "the file the run wrote")
        if not _fits(obj[key], kind):
            shown = repr(obj[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise GatebenchError(f"expected results.json field '{name}' to be {_NAMES[kind]}, "
                                 f"got {type(obj[key]).__name__} {shown}", path=path,
                                 hint="re-run `gatebench run`, or restore the file the run wrote")


def _each(items: list[Any], spec: dict[str, str], where: str, path: Path) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise GatebenchError(f"expected results.json field '{where}[{i}]' to be an object, "
                                 f"got {type(item).__name__}", path=path,
                                 hint="re-run `gatebench run`, or restore the file the run wrote")
        _check(item, spec, f"{where}[{i}]", path)


def validate_results(results: dict[str, Any], path: Path) -> dict[str, Any]:
    """Raise a GatebenchError naming the first field whose type the renderers cannot use."""
    _check(results, TOP, "", path)
    _check(results["protocol"], PROTOCOL, "protocol", path)
    _each(results["results"], ROW, "results", path)
    if not results["results"]:
        raise GatebenchError("expected results.json field 'results' to hold at least one row, "
                             "got an empty list", path=path, hint="re-run `gatebench run`")
    for i, row in enumerate(results["results"]):
        for name, metric in row["metrics"].items():
            where = f"results[{i}].metrics.{name}"
            if metric is not None and not isinstance(metric, dict):
                raise GatebenchError(f"expected results.json field '{where}' to be an object "
                                     f"{{value, ci_low, ci_high, n}}, got "
                                     f"{type(metric).__name__}", path=path,
                                     hint="re-run `gatebench run`, or restore the file the run wrote")
            if metric is not None:
                _check(metric, METRIC, where, path)
    _each(results["targets"], TARGET, "targets", path)
    for i, target in enumerate(results["targets"]):
        if target["op"] not in COMPARISONS:
            raise GatebenchError(f"expected results.json field 'targets[{i}].op' in "
                                 f"{', '.join(COMPARISONS)}, got {target['op']!r}", path=path,
                                 hint="re-run `gatebench run`, or restore the file the run wrote")
        if target["computed"] and target.get("value") is None:
            raise GatebenchError(f"expected results.json field 'targets[{i}].value' to be a "
                                 f"number for a computed target, got null", path=path,
                                 hint="re-run `gatebench run`, or restore the file the run wrote")
    _each(results["checkpoints"], CHECKPOINT, "checkpoints", path)
    _each(results.get("gate_findings") or [], FINDING, "gate_findings", path)
    ceiling = results.get("real_images_ceiling")
    if ceiling is not None:
        _check(ceiling, {"metrics": "dict", "n_images": "?int"}, "real_images_ceiling", path)
    if results.get("sequential") is not None:
        _check_sequential(results, path)
    if results.get("verdict_parts") is not None:
        _check_verdict(results, path)
    return results


def _check_verdict(results: dict[str, Any], path: Path) -> None:
    """The recorded verdict agrees with its parts: every output reads it, none re-decides."""
    parts = results["verdict_parts"]
    for name, part in parts.items():
        if not isinstance(part, dict):
            _refuse(f"verdict_parts.{name}", "to be an object {status, reason}", part, path)
        _check(part, VERDICT_PART, f"verdict_parts.{name}", path)
    expected = "fail" if any(p["status"] == "fail" for p in parts.values()) else "pass"
    if results["verdict"] != expected:
        _refuse("verdict", f"to be {expected!r} as its verdict_parts decide", results["verdict"],
                path)


def _refuse(name: str, expected: str, got: Any, path: Path) -> NoReturn:
    raise GatebenchError(f"expected results.json field '{name}' {expected}, got {got!r}",
                         path=path,
                         hint="re-run `gatebench run`, or restore the file the run wrote")


def _check_sequential(results: dict[str, Any], path: Path) -> None:
    """The "sequential" record's shape, and that it agrees with the run's own layout counts."""
    seq = results["sequential"]
    _check(seq, SEQUENTIAL, "sequential", path)
    _each(seq["rounds"], SEQUENTIAL_ROUND, "sequential.rounds", path)
    _each(seq["rows"], SEQUENTIAL_ROW, "sequential.rows", path)
    decided = [("sequential.decided", seq.get("decided"))]
    decided += [(f"sequential.rounds[{i}].decided", r.get("decided"))
                for i, r in enumerate(seq["rounds"])]
    decided += [(f"sequential.rows[{i}].decision", r.get("decision"))
                for i, r in enumerate(seq["rows"])]
    for name, value in decided:
        if value is not None and value not in DECISIONS:
            _refuse(name, "to be pass, fail or null", value, path)
    for i, row in enumerate(seq["rows"]):
        if row["op"] not in COMPARISONS:
            _refuse(f"sequential.rows[{i}].op", f"in {', '.join(COMPARISONS)}", row["op"], path)
    for i, name in enumerate(seq["set_level"]):
        if not isinstance(name, str):
            _refuse(f"sequential.set_level[{i}]", "to be a metric name", name, path)
    if seq["n_layouts"] > seq["max_layouts"]:
        _refuse("sequential.n_layouts", f"to be at most max_layouts {seq['max_layouts']}",
                seq["n_layouts"], path)
    if seq["stopped_early"] and results["n_layouts"] != seq["n_layouts"]:
        _refuse("n_layouts", f"to equal sequential.n_layouts {seq['n_layouts']} (the layouts a "
                "stopped run generated)", results["n_layouts"], path)
    if results.get("max_layouts") is not None and results["max_layouts"] != seq["max_layouts"]:
        _refuse("max_layouts", f"to equal sequential.max_layouts {seq['max_layouts']}",
                results["max_layouts"], path)


SAMPLE: dict[str, str] = {
    "layout_id": "str", "gate_scale": "?num", "checkpoint": "?str", "image": "?str",
    "image_path": "?str", "clip_score": "?num", "region_clip_score": "?num",
    "garbled_score": "?num", "garbled": "?bool", "n_boxes": "?int", "n_scorable": "?int",
    "n_matched": "?int", "iou_sum": "?num", "all_matched": "?bool", "rel_pairs": "?int",
    "rel_pairs_matched": "?int", "rel_held": "?int", "rel_pairs_unscorable": "?int",
    "boxes": "?list",
    "detections": "?list", "reason": "?str", "caption": "?str"}


def validate_sample(record: Any, path: Path, line: int) -> dict[str, Any]:
    """One samples.jsonl record: an object whose Stable-name fields have their types."""
    if not isinstance(record, dict):
        raise GatebenchError(f"expected a JSON object per samples.jsonl line, got "
                             f"{type(record).__name__}", path=path, line=line,
                             hint="restore the samples.jsonl the run wrote")
    for key, kind in SAMPLE.items():
        value = record.get(key)
        optional = kind.startswith("?")
        if value is None and optional:
            continue
        if value is None or not _fits(value, kind.lstrip("?")):
            got = "nothing" if key not in record else f"{type(value).__name__} {value!r:.40}"
            raise GatebenchError(f"expected samples.jsonl field '{key}' to be "
                                 f"{_NAMES[kind.lstrip('?')]}, got {got}", path=path, line=line,
                                 hint="restore the samples.jsonl the run wrote")
    return record
