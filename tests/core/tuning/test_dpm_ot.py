"""DPM-OT on a 2-D mixture of well-separated Gaussians with the exact (closed-form) GMM denoiser."""

import math

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import VPCosine
from fewstep.core.solvers import sample
from fewstep.core.tuning.dpm_ot import OTConfig, SemiDiscreteOT, fit_ot_map, sample_dpm_ot

from ..gmm import gmm_x0

M, R, STD = 8, 4.0, 0.1  # 8 modes on a circle of radius 4, component std 0.1 (neighbours ~3 apart)
MU = torch.tensor(
    [[R * math.cos(2 * math.pi * k / M), R * math.sin(2 * math.pi * k / M)] for k in range(M)], dtype=torch.float64
)


pytestmark = pytest.mark.usefixtures("one_thread")


class GMMX0(nn.Module):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, net_time, cond=None):
        t = net_time.double() / 1000.0  # VPCosine feeds the net 1000 t
        return gmm_x0(x, self.schedule.alpha(t), self.schedule.sigma(t), MU, torch.zeros(M, dtype=x.dtype), STD)


def mode_mixing(x):
    """Fraction of samples farther than 4 std from every mode (between modes)."""
    return float(((x[:, None, :] - MU).norm(dim=-1).min(1).values > 4 * STD).double().mean())


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    targets = MU[torch.arange(64) % M] + STD * torch.randn(64, 2, generator=g, dtype=torch.float64)  # "training set"
    ot = fit_ot_map(targets, OTConfig(iters=300, lr=0.01, n_mc=4096, seed=0))
    sch = VPCosine()
    return targets, ot, Denoiser(GMMX0(sch), sch, "x0")


def test_ot_map_pushes_gaussian_to_uniform_on_targets(setup):
    targets, ot, _ = setup
    w = ot.cell_masses(100_000, torch.Generator().manual_seed(1)) * len(targets)  # 1 = its fair share
    w0 = SemiDiscreteOT(targets, torch.zeros(64, dtype=torch.float64), ot.weights).cell_masses(100_000) * 64
    # Measured: fitted cells hold 0.94..1.07 of 1/N (MC noise alone is ~1.3%); h = 0 gives 0..8.95.
    assert 0.85 < float(w.min()) and float(w.max()) < 1.15, (float(w.min()), float(w.max()))
    assert float(w0.min()) < 0.2 and float(w0.max()) > 3.0  # the unfitted map is far from uniform
    assert abs(float(ot.h.mean())) < 1e-9


def test_ot_map_is_monotone_cheaper_than_any_reassignment(setup):
    targets, ot, _ = setup
    z = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    idx = ot.assign(z)
    cost = (z - targets[idx]).square().sum(1).mean()
    shuffled = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(3))]  # same marginal
    assert float(cost) < 0.8 * float((z - targets[shuffled]).square().sum(1).mean())
    assert torch.equal(ot(z[:5]), targets[idx[:5]])
    assert torch.allclose(ot.potential(z[:5]), (z[:5] @ targets.T + ot.h).max(1).values)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddim"])
def test_dpm_ot_has_less_mode_mixing_than_plain_solver_at_same_nfe(setup, solver):
    _, ot, den = setup
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    steps = 3
    den.reset_counters()
    plain = sample(den, z, solver, steps, "logsnr")
    nfe_plain = den.nfe
    den.reset_counters()
    ours = sample_dpm_ot(den, z, ot, t_star=0.5, num_steps=steps, solver=solver, generator=torch.Generator().manual_seed(6))
    assert den.nfe == nfe_plain == steps
    mix_plain, mix_ot = mode_mixing(plain), mode_mixing(ours)
    # Measured at 3 NFE: dpmpp_2m 0.556 -> 0.0075; ddim 0.847 -> 0.091 (plain at 20 NFE: 0.004, 0.02).
    assert mix_ot < 0.15 and mix_ot < 0.25 * mix_plain, (mix_plain, mix_ot)
    # No mode collapse: the OT map spreads samples evenly over the 8 modes.
    share = torch.bincount((ours[:, None, :] - MU).norm(dim=-1).argmin(1), minlength=M).double() / len(ours)
    assert float((share - 1 / M).abs().max()) < 0.03, share


def test_dpm_ot_on_noised_latents_and_explicit_grid(setup):
    targets, _, den = setup
    sch = den.schedule
    t_star = 0.4
    g = torch.Generator().manual_seed(7)
    latents = sch.alpha(t_star) * targets + sch.sigma(t_star) * torch.randn(64, 2, generator=g, dtype=torch.float64)
    ot = fit_ot_map(latents, iters=100, n_mc=2048)  # keyword overrides of OTConfig
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grid = torch.tensor([t_star, 0.1, sch.t_min], dtype=torch.float64)
    x = sample_dpm_ot(den, z, ot, t_star, num_steps=2, solver="dpmpp_2m", grid=grid, renoise=False)
    assert x.shape == z.shape and mode_mixing(x) < 0.1
    with pytest.raises(ValueError, match="start at t_star"):
        sample_dpm_ot(den, z, ot, 0.5, num_steps=2, grid=grid)


def test_dpm_ot_validates_inputs(setup):
    targets, ot, den = setup
    z = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_star"):
        sample_dpm_ot(den, z, ot, t_star=2.0)
    with pytest.raises(ValueError, match="values per sample"):
        ot.assign(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to 1"):
        fit_ot_map(targets, weights=torch.ones(64, dtype=torch.float64))
    for bad in ({"iters": 0}, {"lr": 0.0}, {"n_mc": 0}):
        with pytest.raises(ValueError):
            OTConfig(**bad)
