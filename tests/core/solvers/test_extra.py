"""EDM Euler / stochastic sampler, Time-Shift Sampler, tuned few-step grid and DMCMC, on data with exact denoisers.

Models here are tiny objects with ``__call__(x, t) -> x0`` and ``.schedule`` (the solver contract), so every schedule
is fed its own times directly.
"""

import math

import pytest
import torch

from fewstep.core.schedules import EDM, RectifiedFlow, VPCosine, VPDiscrete
from fewstep.core.solvers import make_grid
from fewstep.core.solvers.dmcmc import dmcmc_chain, estimate_sigma, sample_dmcmc
from fewstep.core.solvers.edm import sample_edm_sde, sample_euler, sigma_bar, time_at
from fewstep.core.solvers.first_order import sample_ddim
from fewstep.core.solvers.second_order import sample_dpmpp_2m, sample_heun
from fewstep.core.solvers.time_shift import time_shift
from fewstep.core.solvers.grids import tuned_grid
from fewstep.core.solvers.tuned import sample_tuned

S = 0.5  # Gaussian data: x0 ~ N(0, S^2 I)
F64 = torch.float64


class Gaussian:
    """Exact E[x0 | x_t] = c alpha S^2 / (alpha^2 S^2 + sigma^2) x_t; c < 1 shrinks x0 (a model with exposure bias)."""

    def __init__(self, schedule, c=1.0):
        self.schedule, self.c, self.times = schedule, c, []

    def __call__(self, x, t):
        self.times.append(float(t))
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        return (self.c * a * S**2 / (a**2 * S**2 + s**2)).to(x.dtype) * x


class GMM:
    """x0 ~ sum_k w_k N(mu_k, s_k^2 I): exact E[x0 | x_t] for x_t = alpha x0 + sigma eps (posterior over k, then Tweedie)."""

    def __init__(self, schedule, mu, s, w):
        self.schedule, self.nfe = schedule, 0
        self.mu, self.s, self.w = (torch.as_tensor(v, dtype=F64) for v in (mu, s, w))

    def __call__(self, x, t):
        self.nfe += 1
        a, sg = self.schedule.alpha(t), self.schedule.sigma(t)
        v = a**2 * self.s**2 + sg**2  # (K,) marginal variance of each component
        diff = x[:, None, :] - a * self.mu[None]  # (B, K, d)
        logp = torch.log(self.w) - 0.5 * (diff**2).sum(-1) / v - 0.5 * x.shape[1] * torch.log(v)
        r = torch.softmax(logp, dim=1)  # (B, K) posterior over components
        m = self.mu[None] + (a * self.s**2 / v)[None, :, None] * diff  # (B, K, d) per-component posterior mean
        return (r[..., None] * m).sum(1)

    def stats(self, x):
        """(off-manifold fraction, TV of mode proportions incl. the off part, max |within-mode std / s_k - 1|)."""
        z = (((x[:, None, :] - self.mu[None]) ** 2).sum(-1) / self.s**2).sqrt()  # (B, K) distance in mode stds
        k, near = z.argmin(1), z.min(1).values < 4.0
        props = torch.bincount(k[near], minlength=len(self.w)).to(F64) / len(x)
        off = 1.0 - float(near.to(F64).mean())
        tv = 0.5 * float((props - self.w).abs().sum()) + 0.5 * off
        std = torch.stack([((x[(k == j) & near] - self.mu[j]) ** 2).mean().sqrt() for j in range(len(self.w))])
        return off, tv, float((std / self.s - 1).abs().max())


def noise(n, d, schedule, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * schedule.sigma(
        torch.tensor(schedule.t_max, dtype=F64)
    )


def lambda_grid(schedule, t_hi, t_lo, n):
    """n intervals uniform in lambda from t_hi down to t_lo (ends exact)."""
    t_hi, t_lo = torch.as_tensor(t_hi, dtype=F64), torch.as_tensor(t_lo, dtype=F64)
    lam = torch.linspace(float(schedule.lambda_(t_hi)), float(schedule.lambda_(t_lo)), n + 1, dtype=F64)
    t = schedule.inverse_lambda(lam)
    t[0], t[-1] = t_hi, t_lo
    return t


def marginal_std(schedule, t):
    t = torch.as_tensor(t, dtype=F64)
    return math.sqrt(float(schedule.alpha(t)) ** 2 * S**2 + float(schedule.sigma(t)) ** 2)


# -- EDM samplers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [VPCosine(), RectifiedFlow(), EDM()], ids=["vp_cosine", "flow", "edm"])
def test_euler_is_first_order_and_is_ddim(schedule):
    x_T = noise(8, 16, schedule)
    exact = x_T * marginal_std(schedule, schedule.t_min) / marginal_std(schedule, schedule.t_max)
    errs = []
    for n in (32, 64, 128):
        ts = make_grid(schedule, n, "logsnr")
        x = sample_euler(Gaussian(schedule), x_T, ts)
        errs.append(float((x - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert min(rates) > 0.65 and max(rates) < 1.35, (errs, rates)
    # Euler in (x/alpha, sigma/alpha) is DDIM (Karras et al. 2022, Sec. 4; Song et al. 2021).
    ts = make_grid(schedule, 7, "karras")
    assert torch.allclose(
        sample_euler(Gaussian(schedule), x_T, ts), sample_ddim(Gaussian(schedule), x_T, ts), atol=1e-12
    )


def test_edm_sde_without_churn_is_heun_and_is_reproducible():
    s = VPCosine()
    x_T, ts = noise(16, 4, s), make_grid(s, 6, "karras")
    assert torch.allclose(sample_edm_sde(Gaussian(s), x_T, ts), sample_heun(Gaussian(s), x_T, ts), atol=1e-12)
    a = sample_edm_sde(Gaussian(s), x_T, ts, S_churn=20, generator=torch.Generator().manual_seed(3))
    b = sample_edm_sde(Gaussian(s), x_T, ts, S_churn=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, sample_heun(Gaussian(s), x_T, ts))
    m = Gaussian(s)
    sample_edm_sde(m, x_T, ts, S_churn=20, S_tmin=0.05, S_tmax=1.0, generator=torch.Generator().manual_seed(3))
    assert len(m.times) == 2 * 6  # Heun: two evaluations per step, churned or not


@pytest.mark.parametrize("schedule", [VPCosine(), EDM()], ids=["vp_cosine", "edm"])
def test_edm_sde_converges_in_distribution(schedule):
    """Churned samples lose their tie to x_T; their spread still converges to the data marginal's."""
    x_T = noise(4096, 8, schedule)
    true = marginal_std(schedule, schedule.t_min)
    errs = []
    for n in (8, 32, 128):
        g = torch.Generator().manual_seed(1)
        x = sample_edm_sde(Gaussian(schedule), x_T, make_grid(schedule, n, "logsnr"), S_churn=10, generator=g)
        errs.append(abs(float(x.std()) / true - 1))
        assert abs(float(x.mean())) < 0.02
    assert errs[0] > 4 * errs[1] > 16 * errs[2] and errs[2] < 0.015, errs


# -- Time-Shift Sampler -------------------------------------------------------------------------------------------
def _shift_run(c, **ts_opts):
    s = VPCosine()
    ts, x_T = make_grid(s, 10, "uniform"), noise(512, 16, s)
    m = Gaussian(s, c)
    x = time_shift(sample_ddim, data_var=S**2, **ts_opts)(m, x_T, ts)
    return s, ts, x_T, m, x


def test_time_shift_moves_times_toward_the_samples_noise_level():
    """A shrunk x0 (c < 1) leaves samples less noisy than scheduled: TS hands them to the model at smaller times;
    the more the model inflates x0, the later the times it picks."""
    used = {}
    for c in (0.9, 1.0, 1.1):
        s, ts, _, m, _ = _shift_run(c, window=1.0, cutoff=0.3)
        used[c] = torch.tensor(m.times, dtype=F64)
        assert len(used[c]) == len(ts) - 1  # same NFE as the plain solver
    sched = ts[:-1]
    shifted = (torch.arange(len(sched)) > 0) & (sigma_bar(s, sched) > 0.3)  # never the first step, never past cutoff
    assert int(shifted.sum()) == 8 and torch.equal(used[0.9][~shifted], sched[~shifted])
    assert bool((used[0.9][shifted] < sched[shifted]).all()), used[0.9] - sched
    assert float(used[0.9][shifted].mean()) < float(used[1.0][shifted].mean()) < float(used[1.1][shifted].mean())


def test_time_shift_reduces_exposure_bias_error():
    """c = 0.9: the plain 10-step DDIM ends 29% too narrow; TS halves the gap to the exact PF-ODE solution."""
    s, ts, x_T, _, x_ts = _shift_run(0.9, window=1.0, cutoff=0.3)
    x_plain = sample_ddim(Gaussian(s, 0.9), x_T, ts)
    exact = x_T * marginal_std(s, s.t_min) / marginal_std(s, s.t_max)
    err_plain, err_ts = float((x_plain - exact).norm() / exact.norm()), float((x_ts - exact).norm() / exact.norm())
    assert err_ts < 0.7 * err_plain, (err_plain, err_ts)
    # the paper-sized window (about 30 of 1000 DDPM steps) still helps, a little
    _, _, _, _, x_small = _shift_run(0.9)
    assert float((x_small - exact).norm() / exact.norm()) < err_plain
    # a cutoff above every noise level leaves the solver untouched
    _, _, _, _, x_off = _shift_run(0.9, cutoff=1e9)
    assert torch.equal(x_off, x_plain)


# -- "Hyperparameters are all you need" ---------------------------------------------------------------------------
def _reference_timesteps(schedule, steps, K, rho, stop):
    """The reference scripts' DDPM timesteps: Karras(K, rho) on sigma, truncated at `stop`, Karras(rho=1.2) in index."""
    ac = schedule.alphas_cumprod
    log_sig = (((1 - ac) / ac).sqrt()).log()

    def kar(n, lo, hi, r):
        u = torch.linspace(0, 1, n, dtype=F64)
        return (hi ** (1 / r) + u * (lo ** (1 / r) - hi ** (1 / r))) ** r

    sig_stop = float(kar(K, float(log_sig[0].exp()), float(log_sig[-1].exp()), rho)[stop])
    i = int((torch.log(torch.tensor(sig_stop)) >= log_sig).sum()) - 1  # log-sigma interpolation, as sigma_to_t
    idx_stop = i + float((torch.log(torch.tensor(sig_stop)) - log_sig[i]) / (log_sig[i + 1] - log_sig[i]))
    return kar(steps + 1, idx_stop, 999.0, 1.2)


@pytest.mark.parametrize("steps,K,rho,stop", [(5, 8, 5.0, 6), (8, 12, 7.0, 9)])
def test_tuned_grid_matches_reference_timesteps(steps, K, rho, stop):
    sd = VPDiscrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's
    ts = tuned_grid(sd, steps)
    assert ts.shape == (steps + 1,) and bool((ts[1:] < ts[:-1]).all())
    ref = _reference_timesteps(sd, steps, K, rho, stop)
    assert torch.allclose(sd.t_to_timestep(ts), ref, atol=0.05), (sd.t_to_timestep(ts), ref)
    assert 0.12 < float(sigma_bar(sd, ts[-1])) < 0.16  # truncation at sigma ~0.13-0.15, not at sigma_min


@pytest.mark.parametrize("schedule", [VPDiscrete(), VPCosine()], ids=["vp_discrete", "vp_cosine"])
@pytest.mark.parametrize("steps", [5, 8])
def test_tuned_spacing_beats_logsnr_on_the_same_range(schedule, steps):
    """Same truncated range and solver; the near-uniform (rho_t = 1.2) spacing tracks the exact ODE more closely."""
    ts = tuned_grid(schedule, steps)
    tl = lambda_grid(schedule, ts[0], ts[-1], steps)
    x_T = noise(64, 16, schedule)
    sb_T, sb_stop = float(sigma_bar(schedule, ts[0])), float(sigma_bar(schedule, ts[-1]))
    exact = x_T / float(schedule.alpha(ts[0])) * math.hypot(S, sb_stop) / math.hypot(S, sb_T)  # x/alpha at t_stop
    err = {}
    for name, grid in (("tuned", ts), ("logsnr", tl)):
        err[name] = float((sample_tuned(Gaussian(schedule), x_T, grid) - exact).norm() / exact.norm())
    assert err["tuned"] < err["logsnr"], err
    if steps == 8:
        assert err["tuned"] < 0.02, err


def test_tuned_sampler_picks_the_papers_solver():
    s = VPCosine()
    x_T = noise(8, 4, s)
    for steps, ref in ((5, sample_ddim), (8, lambda m, x, t: sample_dpmpp_2m(m, x, t, lower_order_final=False))):
        ts = tuned_grid(s, steps)
        assert torch.allclose(sample_tuned(Gaussian(s), x_T, ts), ref(Gaussian(s), x_T, ts) / s.alpha(ts[-1]))
        m = Gaussian(s)
        sample_tuned(m, x_T, ts, denoise_to_zero=True)
        assert len(m.times) == steps + 1


# -- DMCMC --------------------------------------------------------------------------------------------------------
MU, SK, W = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.3, 0.3, 0.3], [0.5, 0.3, 0.2]


def test_dlg_noise_level_estimate_is_consistent():
    s = EDM()
    m = GMM(s, MU, SK, W)
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(m.w, 4096, replacement=True, generator=g)
    x0 = m.mu[k] + m.s[k, None] * torch.randn(4096, 2, generator=g, dtype=F64)
    for sb in (0.2, 0.65, 2.0):
        xb = x0 + sb * torch.randn(x0.shape, generator=g, dtype=F64)
        t = time_at(s, torch.tensor(sb, dtype=F64))
        assert abs(float(estimate_sigma(m, xb, t, m(xb, t), g)) / sb - 1) < 0.04


@pytest.mark.parametrize("schedule", [VPCosine(), EDM()], ids=["vp_cosine", "edm"])
def test_dmcmc_chain_beats_plain_solver_at_equal_nfe(schedule):
    """Kim & Ye 2022's claim at small NFE: chains kept near the data manifold need only a short integration.

    Per round: 1 Langevin step at sigma/alpha = 0.3 + 3 DPM-Solver++(2M) steps = 4 NFE per sample, against plain
    DPM-Solver++(2M) with 4 steps from noise. The chains' 40-step initialisation is paid once (amortised, as in the
    reference sampling code); rounds 2-3 are measured.
    """
    m = GMM(schedule, MU, SK, W)
    t_c = time_at(schedule, torch.tensor(0.3, dtype=F64))
    head, tail = lambda_grid(schedule, schedule.t_max, t_c, 40), lambda_grid(schedule, t_c, schedule.t_min, 3)
    x_T, ts = noise(2048, 2, schedule, 1), torch.cat([head[:-1], tail])
    chain = dmcmc_chain(m, x_T, ts, sigma_mcmc=0.3001, n_mcmc=1, eta=1.0, generator=torch.Generator().manual_seed(2))
    next(chain)
    m.nfe = 0
    rounds = [m.stats(next(chain)), m.stats(next(chain))]
    assert m.nfe == 2 * 4
    plain = m.stats(sample_dpmpp_2m(m, noise(2048, 2, schedule, 3), make_grid(schedule, 4, "logsnr")))
    for off, tv, std_err in rounds:
        assert off < 0.005 < plain[0], (rounds, plain)  # no samples stranded between modes (plain: 5-10%)
        assert tv < 0.5 * plain[1], (rounds, plain)  # mode proportions
        assert std_err < plain[2], (rounds, plain)  # within-mode spread


def test_sample_dmcmc_contract():
    s = VPCosine()
    m, ts, x_T = GMM(s, MU, SK, W), make_grid(s, 6, "logsnr"), noise(64, 2, s)
    x = sample_dmcmc(m, x_T, ts, n_mcmc=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == x_T.shape and x.dtype == x_T.dtype and torch.isfinite(x).all()
    assert m.nfe == 6 + 2  # the grid's steps (tail restarts at the chain's level) + the Langevin steps
    m.nfe = 0
    y = sample_dmcmc(m, x_T, ts, n_mcmc=2, gibbs_sigma=True, generator=torch.Generator().manual_seed(0))
    assert m.nfe >= 6 + 2 * 2 - 2 and torch.isfinite(y).all()  # +1 NFE per sigma | x update; the tail may shorten
    z = sample_dmcmc(m, x_T, ts, n_mcmc=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, z)


# -- contract -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [VPDiscrete(), EDM()], ids=["vp_discrete", "edm"])
def test_solvers_accept_grids_ending_at_zero(schedule):
    """``sample(..., denoise_to_zero=True)`` ends grids at t = 0: no model call there, x0 as the last step's output."""
    ts = torch.cat([make_grid(schedule, 5, "logsnr")[:-1], torch.zeros(1, dtype=F64)])
    x_T, g = noise(32, 4, schedule), torch.Generator().manual_seed(0)
    runs = {
        "euler": (lambda m: sample_euler(m, x_T, ts), 5),
        "edm_sde": (lambda m: sample_edm_sde(m, x_T, ts, S_churn=10, generator=g), 2 * 5 - 1),
        "ts_ddim": (lambda m: time_shift(sample_ddim, data_var=S**2)(m, x_T, ts), 5),
        "ts_dpmpp_2m": (lambda m: time_shift(sample_dpmpp_2m, data_var=S**2)(m, x_T, ts), 5),
        "dmcmc": (lambda m: sample_dmcmc(m, x_T, ts, n_mcmc=2, generator=g), 5 + 2),
    }
    for name, (run, nfe) in runs.items():
        m = Gaussian(schedule)
        x = run(m)
        assert torch.isfinite(x).all() and len(m.times) == nfe and min(m.times) > 0, name
    m = Gaussian(schedule)  # Euler into t = 0 returns the last x0 prediction exactly
    x = sample_euler(m, x_T, ts)
    assert torch.allclose(x, m(sample_euler(Gaussian(schedule), x_T, ts[:-1]), ts[-2]))


def test_tuned_sde_uses_the_tuned_grid_and_is_stochastic():
    from fewstep.core.denoiser import Denoiser
    from fewstep.core.solvers import sample
    from fewstep.core.solvers.grids import tuned_grid

    from ..gaussian import GaussianX0

    sched = VPCosine()
    den = Denoiser(GaussianX0(sched), sched, "x0")
    x_T = torch.randn(2000, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = sample(den, x_T, "tuned_sde", num_steps=6, denoise_to_zero=True, generator=torch.Generator().manual_seed(1))
    b = sample(den, x_T, "tuned_sde", num_steps=6, denoise_to_zero=True, generator=torch.Generator().manual_seed(2))
    assert den.nfe == 2 * 7 and not torch.allclose(a, b)  # 6 grid steps + the final x0 call, per run
    assert len(tuned_grid(sched, 6)) == 7
    assert abs(float(a.std()) - 0.5) < 0.1  # the data std S = 0.5 (a 6-step SDE: approximately)
