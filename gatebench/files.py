"""Files, torch-free: content hashes, gatebench's cache folder, all-or-nothing writes.

Hashing a checkpoint or a results file must not import torch (``gates --help`` takes 0.1 s);
every output gatebench writes goes through ``atomic_write_*`` so an interrupted write leaves the
old file whole.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs the next run a re-hash
    return known[key]


def cache_dir() -> Path:
    """gatebench's cache folder: $GATEBENCH_CACHE, else $XDG_CACHE_HOME/gatebench, else ~/.cache."""
    if os.environ.get("GATEBENCH_CACHE"):
        return Path(os.environ["GATEBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gatebench"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file beside it and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename (all or nothing)."""
    path = Path(path)
    if path.is_dir():
        raise GatebenchError("expected an output file, got an existing folder", path=path,
                             hint="name a file inside it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
