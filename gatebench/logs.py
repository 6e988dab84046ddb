"""Training-log readers: the user's train.log, TensorBoard event files, gatebench's JSONL log.

Each reader returns a ``LogSeries``: a DataFrame with one row per logged step and the columns
``step, gate_mean, gate_std, gate_min, gate_max, loss, lr`` (missing values are NaN), so gate
trajectories from logs and from checkpoints are analysed by the same code.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gatebench.errors import LogFormatError

COLUMNS = ("step", "gate_mean", "gate_std", "gate_min", "gate_max", "loss", "lr")
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|-inf))"
GATE_LINE = re.compile(
    rf"Step\s+(\d+):\s*Gate stats\s*-\s*mean:\s*{_NUMBER},\s*std:\s*{_NUMBER},"
    rf"\s*min:\s*{_NUMBER},\s*max:\s*{_NUMBER}", re.IGNORECASE)
LOSS_LINE = re.compile(rf"Step\s+(\d+):.*?\bloss[:=]\s*{_NUMBER}", re.IGNORECASE)
TB_TAGS = {"train/gate_mean": "gate_mean", "train/gate_std": "gate_std",
           "train/gate_min": "gate_min", "train/gate_max": "gate_max",
           "train/loss": "loss", "train/lr": "lr"}


@dataclass(frozen=True)
class LogSeries:
    source: Path
    kind: str                       # "train.log", "tensorboard" or "jsonl"
    frame: pd.DataFrame

    @property
    def gate_points(self) -> pd.DataFrame:
        return self.frame.dropna(subset=["gate_mean"])[["step", "gate_mean", "gate_std",
                                                        "gate_min", "gate_max"]]


def _frame(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame([{"step": step, **values} for step, values in sorted(rows.items())],
                         columns=list(COLUMNS))
    return frame.astype({c: float for c in COLUMNS if c != "step"}).astype({"step": int})


def read_train_log(path: Path) -> LogSeries:
    """Parse ``Step N: Gate stats - mean: M, std: S, min: A, max: B`` (and ``loss`` if logged)."""
    rows: dict[int, dict[str, float]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LogFormatError(f"cannot read training log ({exc})", path=path) from None
    for line in text.splitlines():
        gate = GATE_LINE.search(line)
        if gate:
            step = int(gate.group(1))
            rows.setdefault(step, {}).update(
                dict(zip(("gate_mean", "gate_std", "gate_min", "gate_max"),
                         (float(v) for v in gate.groups()[1:]))))
            continue
        loss = LOSS_LINE.search(line)
        if loss:
            rows.setdefault(int(loss.group(1)), {})["loss"] = float(loss.group(2))
    if not any("gate_mean" in r for r in rows.values()):
        raise LogFormatError("expected lines like 'Step 100: Gate stats - mean: 0.001, std: "
                             "0.0005, min: 0.0, max: 0.002', found none", path=path,
                             hint="was training run with --log-gate-stats?")
    return LogSeries(path, "train.log", _frame(rows))


def read_jsonl_log(path: Path) -> LogSeries:
    """gatebench's own log: one JSON object per line with ``step`` and any of the columns."""
    rows: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise LogFormatError(f"expected a JSON object with an integer 'step', got "
                                     f"{line.strip()[:60]!r} ({type(exc).__name__})",
                                     path=path, line=number) from None
            values = {c: float(record[c]) for c in COLUMNS[1:] if record.get(c) is not None}
            rows.setdefault(step, {}).update(values)
    if not rows:
        raise LogFormatError("expected JSON lines with 'step', found none", path=path)
    return LogSeries(path, "jsonl", _frame(rows))


def read_tensorboard(path: Path) -> LogSeries:
    """Scalars ``train/gate_mean``, ``train/loss``, ``train/lr`` from an event file or folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except Exception as exc:  # noqa: BLE001 - tensorboard raises many types for corrupt files
        raise LogFormatError(f"cannot read TensorBoard events ({type(exc).__name__}: {exc})",
                             path=path) from None
    tags = set(accumulator.Tags().get("scalars", []))
    rows: dict[int, dict[str, float]] = {}
    for tag, column in TB_TAGS.items():
        if tag in tags:
            for event in accumulator.Scalars(tag):
                rows.setdefault(int(event.step), {})[column] = float(event.value)
    if not any("gate_mean" in r for r in rows.values()):
        raise LogFormatError(f"expected a 'train/gate_mean' scalar, found tags "
                             f"{sorted(tags) or 'none'}", path=path)
    return LogSeries(path, "tensorboard", _frame(rows))


def _is_event_file(path: Path) -> bool:
    return path.name.startswith("events.out.tfevents")


def read_logs(path: str | Path) -> list[LogSeries]:
    """Read a log file, or every recognised log in a folder (train.log, *.jsonl, event files)."""
    path = Path(path)
    if not path.exists():
        raise LogFormatError("expected a training log file or folder, got a path that does not "
                             "exist", path=path)
    if path.is_file():
        if _is_event_file(path):
            return [read_tensorboard(path)]
        if path.suffix == ".jsonl":
            return [read_jsonl_log(path)]
        return [read_train_log(path)]
    found: list[LogSeries] = []
    for file in sorted(path.rglob("*.log")):
        found.append(read_train_log(file))
    for file in sorted(path.rglob("*.jsonl")):
        found.append(read_jsonl_log(file))
    event_dirs = sorted({f.parent for f in path.rglob("events.out.tfevents*")})
    for folder in event_dirs:
        found.append(read_tensorboard(folder))
    if not found:
        raise LogFormatError("expected train.log, *.jsonl or TensorBoard event files in the "
                             "folder, found none", path=path)
    return found


def finite(value: float) -> bool:
    return value is not None and math.isfinite(value)
