"""``TASKS``: every installed package's tasks, found through the ``fewstep.tasks`` entry-point group.

Core names no task and imports no modality package: fewstep-image registers ``digits`` and
``shapes``, fewstep-timeseries its forecasting task, each as ``name = "module:OBJECT"`` in its
pyproject, where OBJECT is a ``Task`` instance whose ``name`` equals the entry point's. So installing
a package adds its tasks, and a half-installed one is skipped with a warning, never hiding others.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points

from .task import Task

GROUP = "fewstep.tasks"


def _points() -> dict[str, EntryPoint]:
    """{name: entry point} of the group, sorted by name (the first of two with one name wins)."""
    out: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        out.setdefault(ep.name, ep)
    return out


def _load(ep: EntryPoint) -> Task:
    task = ep.load()
    if not isinstance(task, Task):
        raise TypeError(f"{GROUP} entry point {ep.name!r} ({ep.value}) is a {type(task).__name__}, not a fewstep Task")
    if task.name != ep.name:
        raise ValueError(f"{GROUP} entry point {ep.name!r} ({ep.value}) holds a task named {task.name!r}; use one name")
    return task.check()


def discover() -> dict[str, Task]:
    """{name: Task} of every ``fewstep.tasks`` entry point, sorted by name (imports every task's package)."""
    out: dict[str, Task] = {}
    for name, ep in _points().items():
        try:
            out[name] = _load(ep)
        except ImportError as e:  # a half-installed package must not hide the others' tasks
            warnings.warn(f"{GROUP} entry point {name!r} ({ep.value}) failed to load: {e}; reinstall that package",
                          stacklevel=2)
    return out


class _Tasks(Mapping[str, Task]):
    """A read-only mapping over the entry points. Looking up one name imports only its package (an
    image experiment never imports gluonts); iterating imports them all, once."""

    def __init__(self):
        self._loaded: dict[str, Task] = {}
        self._all: dict[str, Task] | None = None

    def __getitem__(self, name: str) -> Task:
        if name not in self._loaded:
            points = _points()
            if name not in points:
                known = ", ".join(points) or "none: install a modality package such as fewstep-image"
                raise ValueError(f"unknown task {name!r}; known tasks: {known} (list them with `fewstep tasks`)")
            self._loaded[name] = _load(points[name])
        return self._loaded[name]

    def _every(self) -> dict[str, Task]:
        if self._all is None:
            self._all = {**discover(), **self._loaded}
            self._loaded.update(self._all)
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._every()))

    def __len__(self) -> int:
        return len(self._every())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in _points()

    def __repr__(self) -> str:
        return f"TASKS({', '.join(_points())})"


TASKS: Mapping[str, Task] = _Tasks()


def get_task(name: str) -> Task:
    """The registered task ``name``; a ValueError listing the known ones otherwise."""
    return TASKS[name]


def task_names() -> list[str]:
    """Names of the registered tasks, without importing their packages."""
    return list(_points())
