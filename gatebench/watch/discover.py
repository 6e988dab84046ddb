"""Which checkpoint files of a training run are complete: the settle rule.

Why a rule: the user's trainer writes ``checkpoint-N.pt`` in place with ``torch.save``, so a
file can be seen half written; gatebench's trainer renames a finished temporary into place
(every visible file is whole) and says so in its status file (``training_status.json``). A file
is read only when its size and mtime have not changed over the settle interval AND it loads:

* a file that fails to load while it may still be written is retried, never reported broken;
* a file that stays unchanged and unreadable for ``unreadable_after`` seconds is reported
  unreadable (the caller reports it once), and is tried again if it ever changes;
* after a successful load the file is stat'ed again: a file that changed under the load waits.

Each poll costs one ``stat`` per file; a file is loaded only when new or changed (idle follow
mode stays well under 1 % of a core).
"""
from __future__ import annotations

import json
import pickle
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from gatebench.adapters.types import CheckpointInfo
from gatebench.checkpoint import inspect_checkpoint, tensors_digest_of
from gatebench.errors import GatebenchError
from gatebench.readers.paths import CHECKPOINT_SUFFIXES
from gatebench.readers.series import gate_fingerprint

STATUS_FILE = "training_status.json"   # written by gatebench's trainer (train/loop.py)
# what a torn torch.save / safetensors file raises on load besides gatebench's own errors
LOAD_ERRORS = (GatebenchError, OSError, RuntimeError, EOFError, ValueError, KeyError,
               pickle.UnpicklingError, zipfile.BadZipFile, MemoryError)

State = Literal["ready", "waiting", "unreadable"]


@dataclass(frozen=True)
class Observation:
    """One checkpoint file as seen by the latest poll."""

    path: Path
    state: State
    size: int
    mtime_ns: int
    info: CheckpointInfo | None = None   # set when ready
    reason: str | None = None            # why waiting / unreadable
    tensors: str | None = None           # digest of every tensor (series rule 3), when ready


@dataclass
class _Sighting:
    size: int
    mtime_ns: int
    since: float                         # monotonic time since (size, mtime) is unchanged
    failures: int = 0
    reason: str | None = None
    info: CheckpointInfo | None = None
    tensors: str | None = None


@dataclass(frozen=True)
class TrainerStatus:
    """What gatebench's trainer says of its run (absent file: nothing is known)."""

    present: bool = False              # the file exists and is whole
    atomic_writes: bool = False
    complete: bool = False
    final: str | None = None
    step: int | None = None


def read_trainer_status(run_dir: Path) -> TrainerStatus:
    """``training_status.json`` when present and whole; a torn or foreign file says nothing."""
    try:
        doc = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TrainerStatus()
    if not isinstance(doc, dict):
        return TrainerStatus()
    step = doc.get("step")
    return TrainerStatus(present=True, atomic_writes=doc.get("atomic_writes") is True,
                         complete=doc.get("state") == "complete",
                         final=doc.get("final") if isinstance(doc.get("final"), str) else None,
                         step=step if isinstance(step, int) and not isinstance(step, bool)
                         else None)


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run folder's checkpoint files (not recursive; hidden files are temporaries)."""
    try:
        entries = list(run_dir.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p for p in entries if p.suffix in CHECKPOINT_SUFFIXES
                  and not p.name.startswith(".") and p.is_file())


class Settler:
    """Remembers every file across polls and says which are complete (module docstring)."""

    def __init__(self, settle_s: float, unreadable_after_s: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 load: Callable[[Path], CheckpointInfo] = inspect_checkpoint,
                 digest: Callable[[Path], str | None] = tensors_digest_of) -> None:
        self.settle_s = settle_s
        self.unreadable_after_s = max(unreadable_after_s, settle_s)
        self.clock, self.wall, self.load, self.digest = clock, wall, load, digest
        self._seen: dict[Path, _Sighting] = {}

    def observe(self, paths: list[Path], *, atomic: bool = False) -> list[Observation]:
        """One poll over ``paths``; ``atomic``: the writer renames whole files into place, so
        no settle interval is needed (loading is still required)."""
        now = self.clock()
        out = []
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                self._seen.pop(path, None)
                continue
            size, mtime = stat.st_size, stat.st_mtime_ns
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (size, mtime):
                # a file untouched for a while (by its own mtime) has been settling that long
                age = max(0.0, self.wall() - mtime / 1e9)
                seen = _Sighting(size, mtime, now - age)
                self._seen[path] = seen
            out.append(self._judge(path, seen, now, atomic))
        for gone in set(self._seen) - set(paths):
            del self._seen[gone]
        return out

    def infos(self) -> dict[Path, CheckpointInfo]:
        """Every file loaded so far and still present, as it was read."""
        return {p: s.info for p, s in self._seen.items() if s.info is not None}

    def _judge(self, path: Path, seen: _Sighting, now: float, atomic: bool) -> Observation:
        def obs(state: State, reason: str | None = None) -> Observation:
            return Observation(path, state, seen.size, seen.mtime_ns, seen.info, reason,
                               seen.tensors)

        if seen.info is not None:
            return obs("ready")
        steady = now - seen.since
        if not atomic and steady < self.settle_s:
            return obs("waiting", f"changed {steady:.1f} s ago (settle interval "
                                  f"{self.settle_s:g} s)")
        if seen.size == 0:
            seen.reason = "empty file"
        else:
            try:
                info = self.load(path)
                tensors = self.digest(path)   # files of equal gates but other weights differ
            except LOAD_ERRORS as exc:
                seen.failures += 1
                seen.reason = _reason(exc)
            else:
                after = path.stat() if path.exists() else None
                if after is None or (after.st_size, after.st_mtime_ns) != (seen.size,
                                                                            seen.mtime_ns):
                    return obs("waiting", "changed while it was read")
                seen.info, seen.tensors = info, tensors
                return obs("ready")
        if steady >= self.unreadable_after_s and (seen.failures >= 2 or seen.size == 0):
            return obs("unreadable", seen.reason)
        return obs("waiting", f"does not load yet, retrying ({seen.reason})")


def _reason(exc: BaseException) -> str:
    text = exc.render() if isinstance(exc, GatebenchError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def describe(info: CheckpointInfo) -> dict[str, Any]:
    """What watch.json keeps of a loaded checkpoint (the series rule's inputs among them)."""
    fingerprint = gate_fingerprint((g.layer, g.raw) for g in info.gates)
    return {"sha256": info.sha256, "step": info.training.step, "epoch": info.training.epoch,
            "gates": [list(pair) for pair in fingerprint] if fingerprint else None}
