"""Time grids: descending times t_0 = t_max > ... > t_N = t_min, computed in float64."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..schedules import Schedule
from .grid_files import load_searched_grid

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


# -- Li 2025, "Hyperparameters are all you need" (arXiv:2510.02390): the truncated, rho_t-spaced grid of
# its training-free 4-8 step recipe (the solver half of the recipe is solvers/tuned.py).
def tuned_hyperparameters(steps: int) -> tuple[int, float, int]:
    """(K, rho, stop) of the truncation point per step count, from the reference SD 1.5 scripts."""
    if steps < 1:
        raise ValueError(f"steps={steps}: sampling needs at least 1 step")
    if steps <= 4:
        return 8, 5.0, 5
    if steps <= 6:
        return 8, 5.0, 6
    if steps == 7:
        return 12, 10.0, 7
    if steps == 8:
        return 12, 7.0, 9
    return steps + 4, 7.0, steps + 1  # beyond the paper: the 8-step rule, extended


def _inverse_net_time(schedule: Schedule, n: Tensor) -> Tensor:
    """Times t with net_time(t) = n, by bisection (net_time increases in t for every schedule)."""
    lo = torch.full_like(n, schedule.t_min, dtype=torch.float64)
    hi = torch.full_like(n, schedule.t_max, dtype=torch.float64)
    for _ in range(80):
        mid = (lo + hi) / 2
        up = schedule.net_time(mid) < n
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return (lo + hi) / 2


def tuned_grid(
    schedule: Schedule,
    steps: int,
    K: int | None = None,
    rho: float | None = None,
    stop: int | None = None,
    rho_t: float = 1.2,
    sigma_stop: float | None = None,
) -> Tensor:
    """Li 2025: ``steps`` intervals from t_max to the truncation time t_stop, Karras-spaced (rho_t) in network time.

    ``sigma_stop`` sets the truncation noise level sigma/alpha directly; use it where the schedule's sigma/alpha range
    is far from Stable Diffusion's (0.03-14.6), e.g. rectified flow with t_max near 1, where the Karras rule stops
    too early.
    """
    K0, rho0, stop0 = tuned_hyperparameters(steps)
    K, rho, stop = K or K0, rho or rho0, stop if stop is not None else stop0
    if not 0 < stop < K:
        raise ValueError(f"stop={stop} must index one of the K={K} Karras points after the first")
    if sigma_stop is not None:
        t_stop = schedule.inverse_lambda(-torch.log(torch.tensor(sigma_stop, dtype=torch.float64))).clamp(schedule.t_min, schedule.t_max)
    else:
        t_stop = karras(schedule, K - 1, rho)[stop]  # K points from t_max to t_min, as the reference's Karras(K)
    t_max = torch.tensor(schedule.t_max, dtype=torch.float64)
    n_hi, n_lo = float(schedule.net_time(t_max)), max(float(schedule.net_time(t_stop)), 1e-6)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    n = (n_hi ** (1 / rho_t) + u * (n_lo ** (1 / rho_t) - n_hi ** (1 / rho_t))) ** rho_t
    t = _inverse_net_time(schedule, n)
    t[0], t[-1] = schedule.t_max, t_stop
    return t



_BUILDERS = {"uniform": uniform, "quadratic": quadratic, "logsnr": logsnr, "karras": karras, "tuned": tuned_grid}


MAX_STEPS = 100_000


def make_grid(schedule: Schedule, num_steps: int, grid: str | os.PathLike | Tensor = "logsnr") -> Tensor:
    """A named grid with ``num_steps`` intervals, a searched grid saved to a JSON file, or an explicit
    descending tensor of times (checked)."""
    if isinstance(grid, os.PathLike) or (isinstance(grid, str) and grid.endswith(".json")):
        return load_searched_grid(grid, schedule)[0]
    if isinstance(grid, Tensor):
        t = grid.to(torch.float64).flatten()
        if t.numel() < 2 or not bool((t[1:] < t[:-1]).all()):
            raise ValueError("an explicit grid must hold at least 2 strictly descending times")
        return t
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}: sampling needs a whole number of steps >= 1")
    if num_steps > MAX_STEPS:
        raise ValueError(f"num_steps={num_steps}: more than {MAX_STEPS:,} steps is beyond any schedule's resolution; use fewer")
    if grid not in _BUILDERS:
        raise ValueError(
            f"unknown grid {grid!r}; use one of {GRIDS}, a searched grid file (.json) or a descending tensor of times"
        )
    return _BUILDERS[grid](schedule, num_steps)
