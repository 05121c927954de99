"""Fault injection for the reliability tests (``tests/reliability``); inert unless asked for.

``FEWSTEP_FAULT="<action>:<point>[:<nth>]"`` makes the ``nth`` (default 1st) arrival at ``point``
in this process do ``action``:

- ``kill``: SIGKILL this process (a crash, an OOM kill, a pulled plug: no cleanup runs);
- ``term``: send this process SIGTERM (a scheduler or ``timeout`` stopping the run);
- ``enospc`` / ``erofs``: raise the OSError a full or read-only disk raises.

Points: ``weights-temp`` (a checkpoint's weights are in their temporary file, not yet renamed),
``weights-committed`` (renamed into place; the JSON card beside them not yet written),
``iteration`` (a training iteration finished).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "FEWSTEP_FAULT"
POINTS = ("weights-temp", "weights-committed", "iteration")
_seen: dict[str, int] = {}  # arrivals per point since the spec was (re)armed
_armed: list[str] = [""]


def reset() -> None:
    """Start counting arrivals afresh (a test arming the same spec twice in one process)."""
    _seen.clear()


def hit(point: str, filename: str | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    if spec != _armed[0]:  # a new spec counts from zero
        _armed[0] = spec
        reset()
    action, _, rest = spec.partition(":")
    where, _, nth = rest.partition(":")
    if where != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] != int(nth or 1):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action in ("enospc", "erofs"):
        code = errno.ENOSPC if action == "enospc" else errno.EROFS
        raise OSError(code, os.strerror(code), filename)
    else:
        raise ValueError(f"{ENV}={spec!r}: unknown action {action!r}")
