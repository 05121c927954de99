"""DPM-OT: a semi-discrete optimal-transport "expressway" from noise to data latents, then few steps.

Li et al. 2023, "DPM-OT: A New Diffusion Probabilistic Model Based on Optimal Transport",
after the variational semi-discrete OT of Gu et al. (AE-OT). Source mu = N(0, I) in D dimensions,
target nu = sum_i nu_i delta(y_i) over N data latents. Brenier's theorem: the OT map for the
quadratic cost is the gradient of the convex potential u_h(z) = max_i <z, y_i> + h_i, i.e.

    T(z) = y_{i(z)},  i(z) = argmax_i <z, y_i> + h_i,

and h minimises the convex energy E(h) = E_mu[u_h(z)] - sum_i nu_i h_i, whose gradient is
w_i(h) - nu_i with w_i(h) = mu(cell_i) the Gaussian mass of cell i. We estimate w by Monte-Carlo
and descend with Adam. Sampling then maps noise to its target, puts it at noise level t*
(x_t* = alpha y + sigma eps), and finishes with a few solver steps from t* to t_min: every sample
starts inside one mode, which removes the "mode mixing" of few-step solvers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..solvers import sample
from ..solvers.grids import make_grid

_CHUNK = 1 << 22  # (rows x targets) scores per block when assigning


@dataclass(frozen=True)
class OTConfig:
    """Semi-discrete OT fitting (DPM-OT, Li et al. 2023): Adam on the dual with Monte-Carlo masses."""

    iters: int = 400  # gradient steps on h; h is averaged over the second half (Polyak)
    lr: float = 0.01  # Adam step size in units of the scores <z, y>, decayed linearly to lr / 10
    n_mc: int = 4096  # Gaussian samples per step for the cell masses w_i(h)
    seed: int = 0

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"iters={self.iters} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.n_mc < 1:
            raise ValueError(f"n_mc={self.n_mc} must be >= 1")


@dataclass(frozen=True, eq=False)
class SemiDiscreteOT:
    """The fitted map T(z) = y_argmax_i(<z, y_i> + h_i) (DPM-OT; Brenier's theorem)."""

    targets: Tensor  # (N, *shape) data latents y_i
    h: Tensor  # (N,) Brenier potential heights, mean zero
    weights: Tensor  # (N,) target masses nu_i, summing to 1

    def __post_init__(self):
        n = self.targets.shape[0]
        if self.h.shape != (n,) or self.weights.shape != (n,):
            raise ValueError(
                f"h and weights must have shape ({n},), got {tuple(self.h.shape)}, {tuple(self.weights.shape)}"
            )

    @property
    def dim(self) -> int:
        return self.targets[0].numel()

    def potential(self, z: Tensor) -> Tensor:
        """u_h(z) = max_i <z, y_i> + h_i, shape (B,)."""
        return self._scan(z)[0]

    def assign(self, z: Tensor) -> Tensor:
        """Index of the target each noise sample is sent to, shape (B,) long."""
        return self._scan(z)[1]

    def __call__(self, z: Tensor) -> Tensor:
        """T(z): the target latents, shape (B, *target shape)."""
        return self.targets[self.assign(z)]

    def cell_masses(self, n: int = 65536, generator: torch.Generator | None = None) -> Tensor:
        """Monte-Carlo Gaussian mass w_i(h) of every cell, shape (N,); equals nu at the optimum."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return _masses(self.assign(z), self.weights.numel(), n)

    def _scan(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y = self.targets.reshape(self.targets.shape[0], -1).to(torch.float64)  # (N, D)
        z = z.reshape(z.shape[0], -1).to(y.device, torch.float64)  # (B, D)
        if z.shape[1] != y.shape[1]:
            raise ValueError(f"noise has {z.shape[1]} values per sample but targets have {y.shape[1]}")
        rows = max(1, _CHUNK // max(1, y.shape[0]))
        vals, idx = [], []
        for i in range(0, z.shape[0], rows):
            v, j = (z[i : i + rows] @ y.T + self.h.to(y.device)).max(dim=1)  # (b, N) -> (b,)
            vals.append(v)
            idx.append(j)
        return torch.cat(vals), torch.cat(idx)


def _masses(idx: Tensor, n_targets: int, n: int) -> Tensor:
    return torch.bincount(idx.cpu(), minlength=n_targets).to(torch.float64) / n


def fit_ot_map(
    targets: Tensor, config: OTConfig | None = None, weights: Tensor | None = None, **overrides
) -> SemiDiscreteOT:
    """Fit h of the semi-discrete OT map N(0, I) -> sum_i nu_i delta(y_i) (DPM-OT, Li et al. 2023).

    ``targets`` (N, *shape) are data latents (e.g. training samples, clean or noised to t*);
    ``weights`` nu defaults to uniform. Keyword overrides (iters=, lr=, n_mc=, seed=) replace the
    config's fields. Gradient of the energy: w(h) - nu, with w from ``n_mc`` fresh samples a step.
    """
    cfg = dataclasses.replace(config if config is not None else OTConfig(), **overrides)
    n = targets.shape[0]
    if n < 1:
        raise ValueError("need at least one target")
    nu = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights.to(torch.float64).cpu()
    if nu.shape != (n,) or bool((nu < 0).any()) or abs(float(nu.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must be ({n},), non-negative and sum to 1")
    g = torch.Generator().manual_seed(cfg.seed)
    ot = SemiDiscreteOT(targets.detach(), torch.zeros(n, dtype=torch.float64), nu)
    m, v = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    b1, b2 = 0.9, 0.999
    h_sum, n_avg = torch.zeros(n, dtype=torch.float64), 0
    for k in range(1, cfg.iters + 1):
        z = torch.randn(cfg.n_mc, ot.dim, generator=g, dtype=torch.float64)
        grad = _masses(ot.assign(z), n, cfg.n_mc) - nu  # dE/dh = w(h) - nu
        # Adam step on h (descent on the convex energy = ascent on the dual).
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        lr = cfg.lr * (1.0 - 0.9 * (k - 1) / max(1, cfg.iters - 1))
        h = ot.h - lr * (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + 1e-8)
        ot = SemiDiscreteOT(ot.targets, h - h.mean(), nu)  # h is defined up to a constant
        if k > cfg.iters // 2:  # Polyak averaging over the second half damps the Monte-Carlo noise
            h_sum, n_avg = h_sum + ot.h, n_avg + 1
    return SemiDiscreteOT(ot.targets, h_sum / n_avg, nu)


class _StartAt:
    """The schedule seen from t_star: same closed forms, t_max replaced (for ``make_grid``)."""

    def __init__(self, schedule, t_star: float):
        self._schedule, self.t_max, self.t_min = schedule, t_star, schedule.t_min

    def __getattr__(self, name):
        return getattr(self._schedule, name)


def sample_dpm_ot(
    denoiser,
    noise: Tensor,
    ot_map: SemiDiscreteOT,
    t_star: float,
    num_steps: int = 3,
    solver: str = "dpmpp_2m",
    grid: str | Tensor = "logsnr",
    cond: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    renoise: bool = True,
    **solver_opts,
) -> Tensor:
    """DPM-OT sampling (Li et al. 2023): OT expressway to x_t*, then ``num_steps`` solver steps.

    ``renoise=True``: the targets are clean data y, and x_t* = alpha(t*) T(z) + sigma(t*) eps with
    fresh eps from ``generator``. ``renoise=False``: the targets already are latents at t*.
    The OT map costs no network evaluation; NFE is the solver's for ``num_steps`` steps from t*.
    """

    schedule = denoiser.schedule
    if not schedule.t_min < t_star <= schedule.t_max:
        raise ValueError(f"t_star={t_star} must lie in (t_min, t_max] = ({schedule.t_min}, {schedule.t_max}]")
    ts = make_grid(_StartAt(schedule, float(t_star)), num_steps, grid)
    if abs(float(ts[0]) - t_star) > 1e-9 * max(1.0, t_star):
        raise ValueError(f"an explicit grid must start at t_star={t_star}, got {float(ts[0])}")
    # Expressway: noise -> its OT target -> the matching noise level at t*.
    y = ot_map(noise).to(noise.device, noise.dtype).reshape(noise.shape)
    if renoise:
        eps = torch.randn(noise.shape, generator=generator, dtype=noise.dtype).to(noise.device)
        x = schedule.alpha(ts[0]).to(noise.dtype) * y + schedule.sigma(ts[0]).to(noise.dtype) * eps
    else:
        x = y
    # ``sample`` starts from x_T * sigma(ts[0]); hand it x_t* / sigma(t*).
    x_unit = x / schedule.sigma(ts[0]).to(noise.dtype)
    return sample(denoiser, x_unit, solver, num_steps, ts, cond, guidance, generator, **solver_opts)
