"""samples.jsonl: one JSON record per scored image (its field names are stable: compare pairs
old runs by them), written atomically and read back with every record's fields type-checked by
rundir/schema.py (the one boundary for it)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gatebench.errors import MetricError
from gatebench.files import atomic_write_text
from gatebench.readers.jsonl import read_jsonl


def jsonable(value: Any) -> Any:
    """numpy / NaN -> JSON-safe Python values (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


# gatebench/score.py still imports the old private name: drop this alias once it imports
# jsonable (issue 21 part 2).


def write_samples_jsonl(samples: pd.DataFrame, path: str | Path) -> Path:
    """One JSON record per image, UTF-8 with Chinese kept readable; NaN -> null."""
    lines = [json.dumps(jsonable(record), ensure_ascii=False) + "\n"
             for record in samples.to_dict(orient="records")]
    return atomic_write_text(Path(path), "".join(lines))


def read_samples_jsonl(path: str | Path) -> pd.DataFrame:
    """Read ``write_samples_jsonl`` output back (for re-rendering reports); each record's
    fields are type-checked here, the one boundary for samples files."""
    from gatebench.rundir.schema import validate_sample  # noqa: PLC0415

    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, Any, Any], int] = {}      # (checkpoint, gate scale, layout) -> line
    for row in read_jsonl(path, what="samples", error=MetricError):
        record = validate_sample(row.value, path, row.line)
        # a record counted twice would weigh its layout twice in every mean and paired difference
        key = (record.get("checkpoint"), record.get("gate_scale"), record["layout_id"])
        if key in seen:
            scale = "" if key[1] is None else f" at gate scale {key[1]:g}"
            raise MetricError(f"expected one record per (checkpoint, gate scale, layout), got "
                              f"layout {key[2]!r}{scale} again (first at line {seen[key]})",
                              path=path, line=row.line,
                              hint="the file was edited or concatenated: regenerate it with "
                                   "`gatebench run` (cached images make that fast)")
        seen[key] = row.line
        rows.append(record)
    return pd.DataFrame(rows)
