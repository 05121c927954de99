"""One writer per output: an exclusive ``fcntl.flock`` per ``--out`` / work directory.

``with writing(path):`` holds ``.<name>.lock`` beside ``path`` for the whole command, so a second
fewstep process aimed at the same output fails at once (``LockedError`` naming the holder's pid)
instead of both running and the last one silently replacing, or corrupting, the other's files.
Taking the lock also creates the folder and so proves it writable before any work is done, and
removes the temporary files an earlier, killed writer left behind. Under torchrun only rank 0
writes, so only rank 0 locks. Re-entering the lock in the same process is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .io import CheckpointError, WriteError, checkpoint_stem, describe_os_error

_HELD: dict[str, int] = {}  # lock path -> depth, for this process


class LockedError(CheckpointError):
    """Another process holds the output's lock."""


def lock_path(target: str | os.PathLike) -> Path:
    p = checkpoint_stem(target)
    return p.with_name(f".{p.name}.lock")


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def stale_temps(target: str | os.PathLike) -> list[Path]:
    """Temporary files (``.<name>*.tmp``) an interrupted write of ``target`` left behind: beside a
    checkpoint stem, or inside a work directory."""
    p = checkpoint_stem(target)
    found = list(p.parent.glob(f".{p.name}.*.tmp")) if p.parent.is_dir() else []
    if p.is_dir():
        found += list(p.glob(".*.tmp"))
    return sorted(found)


def clean_temps(target: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temps` (only safe while holding the lock); returns what was removed."""
    removed = []
    for t in stale_temps(target):
        with contextlib.suppress(FileNotFoundError):
            t.unlink()
            removed.append(t)
    return removed


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


@contextlib.contextmanager
def writing(target: str | os.PathLike, what: str = "") -> Iterator[list[Path]]:
    """Hold the exclusive lock on ``target`` (a checkpoint stem or a directory) while writing it.

    Yields the stale temporary files that were removed. Raises :class:`LockedError` if another
    process holds it and :class:`WriteError` if the folder cannot be created or written.
    """
    path = lock_path(target)
    key = str(path.parent.resolve() / path.name)
    if not _is_rank0():
        yield []
        return
    if key in _HELD:  # this process already holds it (a command locking what its train() locks)
        _HELD[key] += 1
        try:
            yield []
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(path, Path(target), what)
    _HELD[key] = 1
    try:
        removed = clean_temps(target)
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by an interrupted save of {what or target}; "
                  f"the last committed version is used", file=sys.stderr, flush=True)
        yield removed
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path, target: Path, what: str) -> int:
    label = what or str(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the folder {path.parent} for {label}: {describe_os_error(e)}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteError(f"cannot write to {path.parent} ({label}): {describe_os_error(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"another fewstep process ({_holder(path)}) is writing {label}; wait for it to finish, "
                    f"or write to another --out"
                ) from None
            raise WriteError(f"cannot lock {path}: {describe_os_error(e)}") from None
        # The holder before us may have unlinked the file after we opened it: lock the live one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
