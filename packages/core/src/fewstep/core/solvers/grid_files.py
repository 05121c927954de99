"""Grid files: a time grid saved as small JSON (times + the schedule it was made for).

AutoDiffusion (``fewstep.core.tuning.autodiffusion``) writes them; ``make_grid`` and ``sample`` read
them (``grid="path.json"``), so sampling with a searched grid never imports the search.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import _atomic_write
from ..schedules import Schedule, schedule_from_dict

GRID_FORMAT = "fewstep-searched-grid"
GRID_VERSION = 1

class SearchedGridError(ValueError):
    """A searched-grid file is missing, malformed, or does not fit the schedule it is used with."""


def _check_times(times: Any, where: str) -> list[float]:
    if not isinstance(times, list) or len(times) < 2:
        raise SearchedGridError(f"{where}: 'times' must be a list of at least 2 numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in times):
        raise SearchedGridError(f"{where}: 'times' must hold finite numbers only")
    bad = [i for i in range(len(times) - 1) if not times[i + 1] < times[i]]
    if bad:
        i = bad[0]
        raise SearchedGridError(
            f"{where}: times must be strictly decreasing, but times[{i}]={times[i]} <= times[{i + 1}]={times[i + 1]}"
        )
    return [float(v) for v in times]


def save_searched_grid(path: str | os.PathLike, grid: Tensor, meta: dict[str, Any] | None = None) -> Path:
    """Write a grid as small JSON: times (floats) + metadata (schedule dict, solver, steps, score)."""
    path = Path(path)
    times = _check_times(grid.detach().to("cpu", torch.float64).flatten().tolist(), str(path))
    meta = dict(meta or {})
    if isinstance(meta.get("schedule"), Schedule):
        meta["schedule"] = meta["schedule"].to_dict()
    if "steps" in meta and meta["steps"] != len(times) - 1:
        raise SearchedGridError(f"{path}: meta steps={meta['steps']} but the grid has {len(times) - 1} steps")
    doc = {**meta, "format": GRID_FORMAT, "version": GRID_VERSION, "times": times, "steps": len(times) - 1}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"meta must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from None
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def load_searched_grid(path: str | os.PathLike, schedule: Schedule | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Read and validate a grid file -> (times (N + 1,) float64 descending, metadata).

    If ``schedule`` is given and the file records one, they must match; times must lie in
    [t_min, t_max] of the recorded (or given) schedule, except a final 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: searched-grid file not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchedGridError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != GRID_FORMAT:
        raise SearchedGridError(f"{path}: not a fewstep searched-grid file (missing format={GRID_FORMAT!r})")
    if not isinstance(doc.get("version"), int) or doc["version"] > GRID_VERSION:
        raise SearchedGridError(f"{path}: version {doc.get('version')!r} is not readable by this fewstep")
    times = _check_times(doc.get("times"), str(path))
    if doc.get("steps", len(times) - 1) != len(times) - 1:
        raise SearchedGridError(f"{path}: steps={doc['steps']} but 'times' holds {len(times) - 1} steps")
    recorded = None
    if doc.get("schedule") is not None:
        try:
            recorded = schedule_from_dict(doc["schedule"])
        except (ValueError, TypeError) as e:
            raise SearchedGridError(f"{path}: bad schedule record ({e})") from None
    if schedule is not None and recorded is not None and schedule.to_dict() != recorded.to_dict():
        raise SearchedGridError(
            f"{path}: searched for schedule {recorded.to_dict()} but used with {schedule.to_dict()}; search again"
        )
    ref = schedule if schedule is not None else recorded
    if ref is not None:
        tol = 1e-9 * max(1.0, abs(ref.t_max))
        body = times[:-1] if times[-1] == 0.0 else times  # a final 0 (denoise to zero) is allowed
        if body[0] > ref.t_max + tol or body[-1] < ref.t_min - tol:
            raise SearchedGridError(
                f"{path}: times span [{times[-1]}, {times[0]}], outside the schedule's [{ref.t_min}, {ref.t_max}]"
            )
    meta = {k: v for k, v in doc.items() if k not in ("format", "version", "times")}
    return torch.tensor(times, dtype=torch.float64), meta
