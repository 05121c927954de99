"""Solvers on Gaussian data, where the probability-flow ODE has a closed-form solution."""

import math

import pytest
import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import RectifiedFlow, VPCosine
from fewstep.core.solvers import available, make_grid, sample

from ..gaussian import GaussianX0, exact


@pytest.mark.parametrize("schedule", [VPCosine(), RectifiedFlow()], ids=["vp_cosine", "flow"])
@pytest.mark.parametrize("solver,order", [("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_empirical_order(schedule, solver, order):
    den = Denoiser(GaussianX0(schedule), schedule, "x0")
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = exact(schedule, x_T, schedule.t_min)
    errs = []
    for n in (32, 64, 128):  # asymptotic regime; coarser grids can be non-monotone
        kw = {"lower_order_final": False} if solver == "dpmpp_2m" else {}
        x = sample(den, x_T, solver, num_steps=n, grid="logsnr", **kw)
        errs.append(float((x - ref).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert min(rates) > order - 0.35, (errs, rates)


def test_grids_are_descending_and_cover_the_schedule():
    s = VPCosine()
    for g in ("uniform", "logsnr", "karras", "quadratic"):
        t = make_grid(s, 7, g)
        assert t.shape == (8,) and bool((t[1:] < t[:-1]).all())
        assert math.isclose(float(t[0]), s.t_max) and math.isclose(float(t[-1]), s.t_min)
    with pytest.raises(ValueError, match="num_steps=0: .*>= 1"):
        make_grid(s, 0, "uniform")
    with pytest.raises(ValueError, match="descending"):
        make_grid(s, 3, torch.tensor([0.1, 0.5]))


def test_unknown_solver_lists_the_known_ones():
    den = Denoiser(GaussianX0(VPCosine()), VPCosine(), "x0")
    with pytest.raises(ValueError, match="available"):
        sample(den, torch.randn(1, 1, 2, 2), "rk45")
    assert {"ddim", "heun", "dpmpp_2m"} <= set(available())
