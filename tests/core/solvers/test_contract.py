"""The solver contract, read from the one registry: every entry of ``SOLVERS`` spends the NFE its
spec says, and every entry with an order converges at that order on Gaussian data (exact PF-ODE).

Grid: Karras (rho = 7) steps, non-uniform in lambda, so the variable-step coefficients of the
multistep solvers are tested too (on the uniform logSNR grid Gaussian data is special: 3M shows
order 4 there). The single-step DPM-Solvers use the logSNR grid they were designed for: on Karras
steps the end-point error of DPM-Solver-3 passes through a sign change near 128 steps.
"""

import inspect
import math

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import RectifiedFlow, VPCosine
from fewstep.core.solvers import SOLVERS, SolverSpec, available, sample
from fewstep.core.solvers.arcflow import wide_channels

from ..gaussian import GaussianX0, exact

SCHEDULES = [VPCosine(), RectifiedFlow()]
IDS = ["vp_cosine", "flow"]
ORDERED = sorted(n for n, s in SOLVERS.items() if s.order is not None)


def _x_T(shape=(8, 1, 4, 4), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class WideZeros(nn.Module):
    """An ArcFlow-shaped student net (K = 2 momentum components): enough to count its evaluations."""

    def forward(self, x, net_time, cond=None):
        return x.new_zeros(x.shape[0], wide_channels(2, x.shape[1]), *x.shape[2:])


def _denoiser(name: str, schedule) -> Denoiser:
    if name == "arcflow":
        return Denoiser(WideZeros(), schedule, "flow")
    return Denoiser(GaussianX0(schedule), schedule, "x0")


def test_registry_is_typed_and_complete():
    assert set(available()) == set(SOLVERS)
    for name, spec in SOLVERS.items():
        assert isinstance(spec, SolverSpec) and spec.name == name and spec.paper
    with pytest.raises(TypeError):
        SOLVERS["ddim2"] = SOLVERS["ddim"]  # read-only: nothing else may list solvers
    assert {"ddim", "dpmpp_2m", "unipc", "heun", "dpm_solver_3"} <= set(ORDERED)
    assert "ts_dpmpp_2m" not in SOLVERS  # a dead entry, removed
    den = _denoiser("ddim", VPCosine())
    with pytest.raises(ValueError, match="available: .*dpm_solver_2.*unipc"):
        sample(den, _x_T(), "dpm_solver_4")


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("to_zero", [False, True], ids=["t_min", "zero"])
@pytest.mark.parametrize("num_steps", [1, 3, 6])
def test_nfe_spent_is_what_the_spec_says(name, to_zero, num_steps):
    spec = SOLVERS[name]
    schedule = RectifiedFlow() if name == "arcflow" else VPCosine()
    den = _denoiser(name, schedule)
    sample(den, _x_T(), name, num_steps=num_steps, denoise_to_zero=to_zero, generator=torch.Generator().manual_seed(0))
    assert den.nfe == spec.nfe(num_steps, to_zero), (name, den.nfe)


def test_nfe_follows_options():
    den = _denoiser("dmcmc", VPCosine())
    sample(den, _x_T(), "dmcmc", num_steps=4, n_mcmc=3, gibbs_sigma=True, generator=torch.Generator().manual_seed(0))
    assert den.nfe == SOLVERS["dmcmc"].nfe(4, n_mcmc=3, gibbs_sigma=True) == 4 + 6
    with pytest.raises(ValueError, match="num_steps"):
        SOLVERS["ddim"].nfe(0)


def _rates(den, name, steps=(32, 64, 128), grid="karras"):
    spec = SOLVERS[name]
    # The order holds for the integrator itself; a lower-order final step (DPM-Solver++'s default
    # below 15 steps) is a stabiliser that caps the global order, so it is switched off here.
    opts = {"lower_order_final": False} if "lower_order_final" in inspect.signature(spec.fn).parameters else {}
    x_T = _x_T()
    ref = exact(den.schedule, x_T, den.schedule.t_min)
    errs = [float((sample(den, x_T, name, num_steps=n, grid=grid, **opts) - ref).abs().max()) for n in steps]
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("name", ORDERED)
def test_order_of_convergence_on_gaussian_data(schedule, name):
    den = _denoiser(name, schedule)
    grid = "logsnr" if name.startswith("dpm_solver") else "karras"
    errs, rates = _rates(den, name, grid=grid)
    assert min(rates) > SOLVERS[name].order - 0.35, (errs, rates)
