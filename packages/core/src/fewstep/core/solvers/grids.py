"""Time grids: descending times t_0 = t_max > ... > t_N = t_min, computed in float64."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..schedules import Schedule

GRIDS = ("uniform", "logsnr", "karras", "quadratic", "tuned")


def uniform(schedule: Schedule, steps: int) -> Tensor:
    """Uniform in t (DDIM's default spacing, Song et al. 2021)."""
    return torch.linspace(schedule.t_max, schedule.t_min, steps + 1, dtype=torch.float64)


def quadratic(schedule: Schedule, steps: int) -> Tensor:
    """Quadratic in t (Song et al. 2021, App. D.2): denser near the data end."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u**2


def logsnr(schedule: Schedule, steps: int) -> Tensor:
    """Uniform in lambda = log(alpha/sigma) (Lu et al. 2022, DPM-Solver Sec. 3.3)."""
    lam = torch.linspace(
        float(schedule.lambda_(schedule.t_max)), float(schedule.lambda_(schedule.t_min)), steps + 1, dtype=torch.float64
    )
    t = schedule.inverse_lambda(lam)
    t[0], t[-1] = schedule.t_max, schedule.t_min
    return t


def karras(schedule: Schedule, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, Eq. 5, on the EDM noise level sigma/alpha = exp(-lambda)."""
    s_max = float(torch.exp(-schedule.lambda_(schedule.t_max)))
    s_min = float(torch.exp(-schedule.lambda_(schedule.t_min)))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = schedule.inverse_lambda(-torch.log(sig))
    t[0], t[-1] = schedule.t_max, schedule.t_min
    return t


_BUILDERS = {"uniform": uniform, "quadratic": quadratic, "logsnr": logsnr, "karras": karras}


def make_grid(schedule: Schedule, steps: int, grid: str | os.PathLike | Tensor = "logsnr") -> Tensor:
    """A named grid with ``steps`` intervals, a searched grid saved to a JSON file, or an explicit
    descending tensor of times (checked)."""
    if isinstance(grid, os.PathLike) or (isinstance(grid, str) and grid.endswith(".json")):
        from .search import load_searched_grid  # a grid found by AutoDiffusion

        return load_searched_grid(grid, schedule)[0]
    if isinstance(grid, Tensor):
        t = grid.to(torch.float64).flatten()
        if t.numel() < 2 or not bool((t[1:] < t[:-1]).all()):
            raise ValueError("an explicit grid must hold at least 2 strictly descending times")
        return t
    if steps < 1:
        raise ValueError(f"steps={steps}: sampling needs at least 1 step")
    if grid == "tuned":
        from .tuned import tuned_grid  # Li 2025; imports this module, hence the late import

        return tuned_grid(schedule, steps)
    if grid not in _BUILDERS:
        raise ValueError(
            f"unknown grid {grid!r}; use one of {GRIDS}, a searched grid file (.json) or a descending tensor of times"
        )
    return _BUILDERS[grid](schedule, steps)
