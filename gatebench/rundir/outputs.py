"""Where outputs may go: never onto an input, never half-written.

`report RUN/results.json --out RUN/results.json` or `compare A B --out A` used to replace the very
files they read; an `--out` folder that is an existing file failed with a traceback. Every writer
of a user-named output checks here first, and text outputs are written to a temporary file
beside the target and renamed (gatebench.files.atomic_write_text), so an interrupted write
leaves the old file whole.
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from gatebench.errors import GatebenchError
from gatebench.files import WRITE_FAULTS, sweep_temporaries


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(out: Path, inputs: Iterable[Path], flag: str = "--out") -> None:
    """Refuse an output path that is (or resolves to) one of the command's input files."""
    out = Path(out)
    for source in inputs:
        source = Path(source)
        if _same(out, source) or out.resolve() == source.resolve():
            raise GatebenchError(f"{flag}: expected an output path different from every input, "
                                 f"got the input '{source}'", path=out,
                                 hint=f"choose another {flag} path; the input is left unchanged")


def ensure_out_dir(out: Path, flag: str = "--out") -> Path:
    """Create an output folder; an existing *file* there is an error, not a traceback."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GatebenchError(f"{flag}: expected a folder, got an existing file", path=out,
                             hint=f"pass a folder path to {flag} (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GatebenchError(f"{flag}: cannot create the output folder ({exc.strerror})",
                             path=out, hint="check the path and its permissions") from None
    check_writable(out, flag)
    sweep_temporaries(out, recursive=False)   # a killed write's leftovers beside the outputs
    return out


def check_writable(folder: Path, what: str = "--out") -> Path:
    """A probe write (a temporary file, created and removed) into ``folder``, created if missing.

    An existing folder that is read-only (a read-only mount, no write permission, a full disk)
    is one line and exit 2 here, in seconds, instead of a traceback after every model has loaded.
    The probe writes, rather than asking ``os.access``, so a read-only mount is caught as root too.
    """
    folder = Path(folder)
    probe = folder / f".gatebench-probe.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"gatebench")
    except OSError as exc:
        fix = WRITE_FAULTS.get(exc.errno or -1, "choose a writable folder or fix its permissions")
        raise GatebenchError(f"{what}: expected a writable folder, got one that refuses writes "
                             f"({exc.strerror or exc})", path=folder, hint=fix) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


LOCK_NAME = ".gatebench-run.lock"


@contextmanager
def run_lock(out: Path, rank: int = 0, flag: str = "--out") -> Iterator[Path]:
    """Hold the run folder's lock while a run writes into ``out``; a second run exits 2.

    Behaviour chosen: **refuse, don't wait**. A second `gatebench run` into a folder another run
    is writing is nearly always a duplicate submission (a resubmitted scheduler job, a command
    pasted twice); waiting would hold a GPU idle for the first run's whole length and then redo
    the scoring, while an immediate exit 2 names the folder and the holder's pid, so the user can
    wait for it (then rerun: the images are cached, the rerun only re-scores) or pick another
    `--out`. The lock is an ``fcntl.flock`` on a file inside ``out`` (one per torchrun rank):
    the OS releases it when the process ends however it ends (exception, SIGINT, SIGTERM, even
    SIGKILL), so no stale lock is ever left to clear by hand. The file itself stays (removing a
    lock file races with a run that just opened it); an unlocked file means nothing.
    """
    out = Path(out)
    path = out / (LOCK_NAME if rank == 0 else f".gatebench-run.rank{rank}.lock")
    try:
        handle: IO[str] = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise GatebenchError(f"{flag}: cannot create the run lock ({exc.strerror or exc})",
                             path=path, hint="choose a writable folder") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise GatebenchError(f"{flag}: cannot lock the run folder ({exc.strerror})",
                                     path=path, hint="use a local folder") from None
            handle.seek(0)
            holder = handle.read().strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise GatebenchError(
                f"{flag}: another gatebench run{who} is writing into this folder", path=out,
                hint="wait for it to finish and run again (its images are cached), or choose "
                     f"another {flag}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the file releases the flock
