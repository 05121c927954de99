"""Training-free samplers: pure functions over a Denoiser and a descending time grid.

``sample(denoiser, x_T, solver=..., steps=..., grid=...)`` is the one entry point; each solver is a
short function ``sample_<name>(model, x, ts, **opts)`` where ``model(x, t)`` returns x0.

Cost: ``steps`` counts grid intervals. Multistep solvers (ddim, ddpm, dpmpp_*, unipc_*) spend one
NFE per interval; heun spends 2 (1 into t = 0); single-step ``dpm_solver_k`` spends k per interval.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import check_grid
from .arcflow import sample_arcflow
from .boot import sample_boot
from .consistency import sample_consistency
from .first_order import ddim_step, sample_ddim
from .grids import GRIDS, make_grid
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from .second_order import sample_heun
from .singlestep import sample_dpm_solver
from .unipc import sample_unipc
from .edm import sample_edm_sde, sample_euler
from .dmcmc import sample_dmcmc
from .time_shift import time_shift
from .tuned import sample_tuned, sample_tuned_sde
from .disa import DiSASchedule, disa_steps, sample_head
from .dpm_ot import OTConfig, SemiDiscreteOT, fit_ot_map, sample_dpm_ot
from .search import SearchConfig, SearchResult, autodiffusion_search, error_to_reference, load_searched_grid, save_searched_grid

SOLVERS = {
    "ddim": sample_ddim,
    "ddpm": partial(sample_ddim, eta=1.0),
    "heun": sample_heun,
    "dpm_solver_1": partial(sample_dpm_solver, order=1),
    "dpm_solver_2": partial(sample_dpm_solver, order=2),
    "dpm_solver_3": partial(sample_dpm_solver, order=3),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc_bh1": partial(sample_unipc, variant="bh1"),
    "unipc_bh2": partial(sample_unipc, variant="bh2"),
    "unipc": partial(sample_unipc, variant="bh2"),
    "euler": sample_euler,
    "edm_sde": sample_edm_sde,
    "ts_ddim": time_shift(sample_ddim),
    "ts_heun": time_shift(sample_heun),
    "tuned": sample_tuned,
    "tuned_sde": sample_tuned_sde,
    "dmcmc": sample_dmcmc,
    "consistency": sample_consistency,
    "boot": sample_boot,
    "arcflow": sample_arcflow,
}
STOCHASTIC = {"ddpm", "dpmpp_2m_sde", "edm_sde", "dmcmc", "tuned_sde", "consistency"}  # these take ``generator``
STUDENT_ONLY = {"boot", "arcflow"}  # sample only students trained for them (their nets predict something else)
OWN_FINISH = {"tuned", "tuned_sde"}  # stop early by design; denoise_to_zero is the solver's own final x0 call


DEFAULT_SOLVER, DEFAULT_STEPS = "dpmpp_2m", 20


def available() -> list[str]:
    """Names accepted by :func:`sample` ("auto" picks a student's own rule, else dpmpp_2m)."""
    return sorted(SOLVERS)


def resolve_rule(denoiser: Denoiser, solver: str = "auto", steps: int | None = None, grid=None) -> tuple[str, int, object, dict]:
    """(solver, steps, grid, options) that ``sample`` will use.

    ``solver="auto"`` takes a distilled student's own rule (``denoiser.sampler``: its solver, its
    trained grid and options) and otherwise DPM-Solver++(2M) with 20 logSNR steps. A student's
    trained grid is used when neither ``steps`` nor ``grid`` asks for something else.
    """
    rule = dict(denoiser.sampler or {})
    if solver == "auto":
        solver = rule.pop("solver", DEFAULT_SOLVER)
        own_grid = rule.pop("grid", None)
        if grid is None and own_grid is not None and (steps is None or steps == denoiser.steps):
            grid = torch.tensor(own_grid, dtype=torch.float64) if isinstance(own_grid, list) else own_grid
        opts = rule
    else:
        opts = {}
    if steps is None:
        steps = denoiser.steps or DEFAULT_STEPS
    return solver, steps, ("logsnr" if grid is None else grid), opts


class Bound:
    """Binds conditioning and guidance so solvers see ``model(x, t) -> x0``."""

    def __init__(self, denoiser: Denoiser, cond, guidance):
        self.denoiser, self.cond, self.guidance = denoiser, cond, guidance
        self.schedule = denoiser.schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.denoiser(x, t, self.cond, self.guidance)


def sampling_grid(schedule, steps: int, grid: str | os.PathLike | Tensor = "logsnr", denoise_to_zero: bool = False) -> Tensor:
    """The checked, descending time grid ``sample`` integrates over (float64, on the CPU).

    With ``denoise_to_zero`` a named grid's last time becomes 0 and an explicit grid gets 0 appended.
    """
    ts = check_grid(schedule, make_grid(schedule, steps, grid))
    if denoise_to_zero and float(ts[-1]) != 0.0:
        zero = ts.new_zeros(1)
        ts = torch.cat([ts, zero]) if isinstance(grid, Tensor) else torch.cat([ts[:-1], zero])
    return ts


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    solver: str = "auto",
    steps: int | None = None,
    grid: str | os.PathLike | Tensor | None = None,
    cond: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    denoise_to_zero: bool = False,
    **opts,
) -> Tensor:
    """Integrate from standard Gaussian noise ``x_T`` (scaled here by sigma(t_0)) to data.

    ``grid`` is a named grid with ``steps`` intervals from t_max to t_min, or an explicit descending
    tensor of times in [t_min, t_max] that may end with 0 (then ``steps`` is ignored). With
    ``denoise_to_zero`` the last time of a named grid becomes 0, so the last step returns the x0
    prediction at t_{N-1} (diffusers' ``final_sigmas_type="zero"``; same NFE); an explicit grid
    gets a 0 appended. Returns the sample at the grid's last time (t_min, where sigma is ~1e-2 or
    less, or exactly 0). ``solver="auto"`` (default) samples a distilled student with its own rule
    and step count, and anything else with dpmpp_2m at 20 steps (see :func:`resolve_rule`).
    """
    solver, steps, grid, rule_opts = resolve_rule(denoiser, solver, steps, grid)
    opts = {**rule_opts, **opts}
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(available())}")
    if solver in OWN_FINISH and isinstance(grid, str) and grid == "logsnr":
        grid = "tuned"  # the paper's recipe is a grid and a solver together
    if solver in OWN_FINISH:
        opts["denoise_to_zero"] = denoise_to_zero
    ts = sampling_grid(denoiser.schedule, steps, grid, denoise_to_zero and solver not in OWN_FINISH)
    ts = ts.to(x_T.device)
    model = Bound(denoiser, cond, guidance)
    x = x_T * denoiser.schedule.sigma(ts[0]).to(x_T.dtype)
    fn = SOLVERS[solver]
    if solver in STOCHASTIC:
        opts["generator"] = generator
    return fn(model, x, ts, **opts).to(x_T.dtype)


__all__ = [
    "GRIDS",
    "SOLVERS",
    "STOCHASTIC",
    "STUDENT_ONLY",
    "available",
    "resolve_rule",
    "ddim_step",
    "sample_consistency",
    "check_grid",
    "make_grid",
    "sample",
    "sampling_grid",
    "Bound",
    "SearchConfig",
    "SearchResult",
    "autodiffusion_search",
    "error_to_reference",
    "save_searched_grid",
    "load_searched_grid",
    "OTConfig",
    "SemiDiscreteOT",
    "fit_ot_map",
    "sample_dpm_ot",
    "DiSASchedule",
    "disa_steps",
    "sample_head",
    "time_shift",
]
