"""The training logs of a run being watched, read again only when they change.

Why not readers.logs.read_logs(folder): that reads a folder recursively and fails on the first
file it cannot parse; a live run has a log line half written at any moment, and the watch's own
output (samples.jsonl, its TensorBoard folder) may sit inside the run folder. Here the run
folder's own ``*.log`` / ``*.jsonl`` and its event folders (the watch's excluded) are read with
the same readers, one at a time, and a file that does not parse yet is skipped until it does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gatebench.errors import GatebenchError
from gatebench.readers.logs import LogSeries, read_jsonl_log, read_tensorboard, read_train_log


class LiveLogs:
    """``read()``: every readable log, or None when no log file changed since the last call."""

    def __init__(self, run_dir: Path, exclude: Sequence[Path] = ()) -> None:
        self.run_dir = run_dir
        self.exclude = [p.resolve() for p in exclude]
        self._stamp: tuple | None = None
        self.latest: list[LogSeries] = []      # what the last read found (the most rows first)

    def _sources(self) -> list[tuple[str, Path]]:
        found = [("log", p) for p in sorted(self.run_dir.glob("*.log"))]
        found += [("jsonl", p) for p in sorted(self.run_dir.glob("*.jsonl"))]
        folders = sorted({p.parent for p in self.run_dir.rglob("events.out.tfevents*")})
        found += [("tensorboard", f) for f in folders if not self._excluded(f)]
        return found

    def _excluded(self, folder: Path) -> bool:
        folder = folder.resolve()
        return folder.name == "gatebench" or any(folder == x or x in folder.parents
                                                 for x in self.exclude)

    def read(self) -> list[LogSeries] | None:
        sources = self._sources()
        stamp = tuple((str(p), _mtime(p, kind)) for kind, p in sources)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        readers = {"log": read_train_log, "jsonl": read_jsonl_log,
                   "tensorboard": read_tensorboard}
        out = []
        for kind, path in sources:
            try:
                out.append(readers[kind](path))
            except GatebenchError:
                continue     # not a training log, or a line still being written
        self.latest = sorted(out, key=lambda log: -len(log.frame))
        return out


def _mtime(path: Path, kind: str) -> int:
    try:
        if kind == "tensorboard":
            return max((p.stat().st_mtime_ns + p.stat().st_size for p in
                        path.glob("events.out.tfevents*")), default=0)
        stat = path.stat()
        return stat.st_mtime_ns + stat.st_size
    except OSError:
        return -1
