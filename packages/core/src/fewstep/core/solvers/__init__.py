"""Training-free samplers: pure functions over a Denoiser and a descending time grid.

``sample(denoiser, x_T, solver=..., steps=..., grid=...)`` is the one entry point; each solver is a
short function ``sample_<name>(model, x, ts, **opts)`` where ``model(x, t)`` returns x0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .first_order import sample_ddim
from .grids import GRIDS, make_grid
from .second_order import sample_dpmpp_2m, sample_heun

SOLVERS = {
    "ddim": sample_ddim,
    "ddpm": partial(sample_ddim, eta=1.0),
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}
STOCHASTIC = {"ddpm"}


def available() -> list[str]:
    """Names accepted by :func:`sample`."""
    return sorted(SOLVERS)


class _Bound:
    """Binds conditioning and guidance so solvers see ``model(x, t) -> x0``."""

    def __init__(self, denoiser: Denoiser, cond, guidance):
        self.denoiser, self.cond, self.guidance = denoiser, cond, guidance
        self.schedule = denoiser.schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.denoiser(x, t, self.cond, self.guidance)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    solver: str = "dpmpp_2m",
    steps: int = 20,
    grid: str | Tensor = "logsnr",
    cond: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    **opts,
) -> Tensor:
    """Integrate from standard Gaussian noise ``x_T`` (scaled here by sigma(t_max)) to data.

    Returns the sample at the grid's last time (t_min, where sigma is ~1e-2 or less).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {available()}")
    ts = make_grid(denoiser.schedule, steps, grid).to(x_T.device)
    model = _Bound(denoiser, cond, guidance)
    x = x_T * denoiser.schedule.sigma(ts[0]).to(x_T.dtype)
    fn = SOLVERS[solver]
    if solver in STOCHASTIC:
        opts["generator"] = generator
    return fn(model, x, ts, **opts).to(x_T.dtype)


__all__ = ["sample", "available", "make_grid", "GRIDS", "SOLVERS"]
