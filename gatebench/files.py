"""Files, torch-free: content hashes, gatebench's cache folder, all-or-nothing writes.

Hashing a checkpoint or a results file must not import torch (``gates --help`` takes 0.1 s);
every output gatebench writes goes through ``atomic_write_*`` so an interrupted write leaves the
old file whole.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gatebench.errors import GatebenchError


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, remembered per (path, size, mtime) since hashing dominates `gates`."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = cache_dir() / "sha256.json"
    known: dict[str, str] = {}
    if cache.is_file():
        try:
            known = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    known[key] = digest.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(known))
    except (OSError, GatebenchError):
        pass  # a read-only home only costs the next run a re-hash
    return known[key]


def cache_dir() -> Path:
    """gatebench's cache folder: $GATEBENCH_CACHE, else $XDG_CACHE_HOME/gatebench, else ~/.cache."""
    if os.environ.get("GATEBENCH_CACHE"):
        return Path(os.environ["GATEBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gatebench"


# The write faults a user fixes outside gatebench (space, mounts, permissions): one line, exit 2.
WRITE_FAULTS: dict[int, str] = {
    errno.ENOSPC: "free some space on that disk (or point the folder elsewhere)",
    errno.EDQUOT: "free some of your disk quota (or point the folder elsewhere)",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
}
# gatebench's own mark: the sweep never touches another program's temporaries in a shared --out
_TMP = re.compile(r"^\.(?P<name>.+)\.gatebench-(?P<pid>\d+)\.tmp$")


def temporary_name(path: Path) -> Path:
    """``.<name>.gatebench-<pid>.tmp`` beside ``path``: hidden, per process, and ours (the
    sweep deletes only names of this form)."""
    return path.with_name(f".{path.name}.gatebench-{os.getpid()}.tmp")


def write_fault(exc: OSError, path: Path | str | None = None) -> GatebenchError | None:
    """The one-line error for a write fault the user must fix (disk full, read-only, denied)."""
    fix = WRITE_FAULTS.get(exc.errno or -1)
    if fix is None:
        return None
    where = path if path is not None else exc.filename
    return GatebenchError(f"cannot write: {exc.strerror or exc}", path=where, hint=fix)


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    Every output and cache file gatebench writes goes through here (tests/test_faults.py checks
    that nothing is opened for writing in place): an interrupted or failed write leaves the old
    file whole and no temporary behind, and a full disk, a read-only mount or a refused
    permission is one line naming the path and the fix (exit 2), never a traceback.
    """
    path = Path(path)
    if path.is_dir():
        raise GatebenchError("expected an output file, got an existing folder", path=path,
                             hint="name a file inside it")
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        fault = write_fault(exc, path) if isinstance(exc, OSError) else None
        if fault is not None:
            raise fault from None
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (``atomic_output``)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` all or nothing."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return Path(path)


def sweep_temporaries(folder: Path | str, recursive: bool = True) -> list[Path]:
    """Delete this tool's temporaries left by processes that no longer run (a kill -9, a crash).

    Only ``.<name>.gatebench-<pid>.tmp`` files whose pid is not alive are removed: a concurrent
    run's write in progress is left alone, and so is every other program's file. Returns what
    was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    pattern = ".*.gatebench-*.tmp"
    for candidate in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
        match = _TMP.match(candidate.name)
        if match is None or not candidate.is_file() or _alive(int(match["pid"])):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
