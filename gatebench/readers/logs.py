"""Training-log readers: the user's train.log, TensorBoard event files, gatebench's JSONL log.

Each reader returns a ``LogSeries``: a DataFrame with one row per logged step and the columns
``step, gate_mean, gate_std, gate_min, gate_max, loss, lr`` and the write diagnostics
``effect_in_boxes, effect_lift, box_attention_kappa, effect_norm`` that ``gatebench train`` logs
(missing values are NaN), so gate trajectories from logs and from checkpoints are analysed by the
same code, and a log that has them also shows whether control grows, not only the gate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gatebench.errors import LogFormatError
from gatebench.readers.jsonl import read_jsonl

WRITE_COLUMNS = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")
COLUMNS = ("step", "gate_mean", "gate_std", "gate_min", "gate_max", "loss", "lr", *WRITE_COLUMNS)
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|-inf))"
GATE_LINE = re.compile(
    rf"Step\s+(\d+):\s*Gate stats\s*-\s*mean:\s*{_NUMBER},\s*std:\s*{_NUMBER},"
    rf"\s*min:\s*{_NUMBER},\s*max:\s*{_NUMBER}", re.IGNORECASE)
LOSS_LINE = re.compile(rf"Step\s+(\d+):.*?\bloss[:=]\s*{_NUMBER}", re.IGNORECASE)
TB_TAGS = {"train/gate_mean": "gate_mean", "train/gate_std": "gate_std",
           "train/gate_min": "gate_min", "train/gate_max": "gate_max",
           "train/loss": "loss", "train/lr": "lr",
           **{f"train/{column}": column for column in WRITE_COLUMNS}}


MAX_STEP = 2 ** 63 - 1             # steps are stored as int64


@dataclass(frozen=True)
class LogSeries:
    source: Path
    kind: str                       # "train.log", "tensorboard" or "jsonl"
    frame: pd.DataFrame
    # steps that logged a gate value, NaN included: a diverged run logs `mean: nan`, and that
    # line must reach the `nan` finding instead of being dropped as "no gate value here"
    gate_steps: frozenset[int] | None = None

    @property
    def gate_points(self) -> pd.DataFrame:
        columns = ["step", "gate_mean", "gate_std", "gate_min", "gate_max"]
        if self.gate_steps is None:
            return self.frame.dropna(subset=["gate_mean"])[columns]
        return self.frame[self.frame["step"].isin(self.gate_steps)][columns]

    @property
    def write_points(self) -> pd.DataFrame:
        """Steps that logged a write diagnostic: ``step`` and the diagnostics logged at all."""
        present = [c for c in WRITE_COLUMNS if self.frame[c].notna().any()]
        return self.frame.dropna(subset=present, how="all")[["step", *present]] if present \
            else self.frame.iloc[0:0][["step"]]


def _step(value: object, path: Path, line: int | None) -> int:
    """A log's step number: a non-negative integer int64 can hold (a JSON 3.0 is 3)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not value.is_integer()) \
            or not 0 <= int(value) <= MAX_STEP:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise LogFormatError(f"expected 'step' to be an integer between 0 and {MAX_STEP}, got "
                             f"{shown}", path=path, line=line,
                             hint="the log line is corrupt; delete or fix it")
    return int(value)


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
    gate_steps: set[int] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        gate = GATE_LINE.search(line)
        if gate:
            step = _step(int(gate.group(1)), path, number)
            gate_steps.add(step)
            rows.setdefault(step, {}).update(
                dict(zip(("gate_mean", "gate_std", "gate_min", "gate_max"),
                         (float(v) for v in gate.groups()[1:]), strict=True)))
            continue
        loss = LOSS_LINE.search(line)
        if loss:
            rows.setdefault(_step(int(loss.group(1)), path, number), {})["loss"] = \
                float(loss.group(2))
    if not any("gate_mean" in r for r in rows.values()):
        raise LogFormatError("expected lines like 'Step 100: Gate stats - mean: 0.001, std: "
                             "0.0005, min: 0.0, max: 0.002', found none", path=path,
                             hint="was training run with --log-gate-stats?")
    return LogSeries(path, "train.log", _frame(rows), frozenset(gate_steps))


def _jsonl_value(record: dict, column: str, path: Path, line: int) -> float | None:
    """One numeric field of a JSONL log line: a number or null (1e400 reads as inf and is
    reported as non-finite by the gate checks); anything else names the field and line."""
    value = record.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise LogFormatError(f"expected '{column}' to be a number or null, got "
                             f"{type(value).__name__} {shown}", path=path, line=line,
                             hint="the log line is corrupt; delete or fix it")
    try:
        return float(value)
    except OverflowError:      # an integer with 400 digits
        return math.copysign(math.inf, value)


def read_jsonl_log(path: Path) -> LogSeries:
    """gatebench's own log: one JSON object per line with ``step`` and any of the columns."""
    rows: dict[int, dict[str, float]] = {}
    gate_steps: set[int] = set()
    for row in read_jsonl(path, what="training log", error=LogFormatError,
                          hint="each line: a JSON object with an integer 'step'"):
        number, record = row.line, row.value
        if "step" not in record:
            raise LogFormatError("expected a JSON object with an integer 'step', got one without "
                                 "'step'", path=path, line=number)
        step = _step(record["step"], path, number)
        values = {}
        for column in COLUMNS[1:]:
            value = _jsonl_value(record, column, path, number)
            if value is not None:
                values[column] = value
        if "gate_mean" in values:
            gate_steps.add(step)
        rows.setdefault(step, {}).update(values)
    if not rows:
        raise LogFormatError("expected JSON lines with 'step', found none", path=path)
    return LogSeries(path, "jsonl", _frame(rows), frozenset(gate_steps))


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
