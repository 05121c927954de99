"""Observation self-guidance (TSDiff "Predict", Kollovieh et al. 2023, Sec. 4.1, Eq. 7-9).

An unconditional model p(x) becomes a forecaster by sampling p(x | y_obs) with the score
grad log p(x_t) + s grad log p(y_obs | x_t), where -log p(y_obs | x_t) is an energy on the one-step
denoised estimate x0_hat(x_t): the quantile (pinball) loss, sample j of S aiming at quantile
j / (S + 1), or the squared error, summed over observed entries.

In eps terms (TSDiff's DDIM guidance, App. C) eps_g = eps + s sigma_t grad_x E, i.e. the x0
prediction is moved to x0_g = x0_hat - s (sigma_t^2 / alpha_t) grad_x E. :class:`ObservationGuided`
wraps a Denoiser that way, so the core's own samplers run guided unchanged: ``ddpm`` (ancestral,
eta = 1), ``ddim``, and fast solvers such as ``dpmpp_2m`` at 10-20 NFE, or a distilled student's own
rule (``solver="auto"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from fewstep.core import checks
from fewstep.core.denoiser import Denoiser
from fewstep.core.solvers import resolve_rule, sample, sampling_grid
from torch import Tensor, nn

ENERGIES = ("quantile", "mse")


@dataclass(frozen=True)
class GuidanceConfig:
    """How to sample a forecast: energy, guidance scale s, solver, steps and grid.

    ``solver="ddpm"`` with 100 uniform steps is TSDiff's guided DDPM; ``"ddim"`` its DDIM variant;
    any core solver name works (``"dpmpp_2m"`` at 10-20 steps is the fast variant), and ``"auto"``
    uses a distilled student's own rule. ``num_steps=None`` means the card's ``student_steps`` if set (a
    student), else 100.
    """

    energy: str = "quantile"
    scale: float = 4.0
    solver: str = "ddpm"
    num_steps: int | None = None  # sampling steps (None: the model's own, else 100)
    grid: str = "uniform"

    def __post_init__(self):
        if self.energy not in ENERGIES:
            raise ValueError(f"energy={self.energy!r}; use one of {ENERGIES}")
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"guidance scale {self.scale} must be a finite number >= 0 (0 = unguided)")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps}: sampling needs at least 1 step")


def default_scale(steps: int | None) -> float:
    """Guidance scale for a step count: 4 at 50+ steps, 2 at 20-49, 1 at 10-19, 0.5 at 5-9, 0.1 below.

    A coarser grid takes a proportionally larger guidance step per call, and too large a step
    overshoots the observations. The thresholds come from the sweep in
    benchmarks/timeseries_scales.py (table: docs/benchmarks/timeseries_scales.md)."""
    n = steps or 100
    return 4.0 if n >= 50 else 2.0 if n >= 20 else 1.0 if n >= 10 else 0.5 if n >= 5 else 0.1


def sample_quantiles(batch: int, num_samples: int, device=None) -> Tensor:
    """Quantile level of each row of a (batch * num_samples) stack: sample j aims at (j + 1) / (S + 1)."""
    q = (torch.arange(num_samples, device=device) + 1.0) / (num_samples + 1.0)
    return q.repeat(batch)


def energy(x0: Tensor, obs: Tensor, mask: Tensor, kind: str, q: Tensor | None = None) -> Tensor:
    """Observation energy summed over observed entries (TSDiff Eq. 8 MSE, Eq. 9 quantile)."""
    e = obs - x0
    if kind == "mse":
        per = e.pow(2)
    elif kind == "quantile":
        if q is None:
            raise ValueError("the quantile energy needs one quantile level per row")
        q = q.to(e.dtype).reshape(-1, *([1] * (e.ndim - 1)))
        per = torch.maximum(q * e, (q - 1.0) * e)
    else:
        raise ValueError(f"unknown energy {kind!r}; use one of {ENERGIES}")
    return (per * mask).sum()


class ObservationGuided(nn.Module):
    """A Denoiser whose x0 prediction is corrected by the observation energy's gradient (self-guidance).

    Speaks the Denoiser call signature ``(x, t, cond, guidance, kind)`` so ``fewstep.core.solvers.sample``
    integrates it as it is; each call costs one network forward and one backward pass.
    """

    def __init__(self, denoiser: Denoiser, obs: Tensor, mask: Tensor, scale: float, kind: str = "quantile",
                 q: Tensor | None = None):
        super().__init__()
        if obs.shape != mask.shape:
            raise ValueError(f"observation {tuple(obs.shape)} and mask {tuple(mask.shape)} must have the same shape")
        self.denoiser = denoiser
        self.obs, self.mask, self.scale, self.kind, self.q = obs, mask.to(obs.dtype), float(scale), kind, q
        self.calls = 0  # denoiser calls so far (named when a value stops being finite)
        self.grid: Tensor | None = None  # the sampling grid's times, if the caller knows them (step numbers)
        # What the core sampler reads from a Denoiser.
        self.schedule = denoiser.schedule
        self.card = denoiser.card
        self.sample_shape = denoiser.sample_shape

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: float | None = None,
                kind: str = "x0") -> Tensor:
        if kind != "x0":
            raise ValueError("ObservationGuided returns x0 only (what the core solvers ask for)")
        self.calls += 1
        self._check(x, t, "the sample entering this step (the previous step's update)")
        if self.scale == 0:
            x0 = self.denoiser(x, t, cond, guidance)
            self._check(x0, t, "the model's x0 prediction")
            return x0
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = self.denoiser(x_in, t, cond, guidance)
            self._check(x0, t, "the model's x0 prediction")
            (grad,) = torch.autograd.grad(energy(x0, self.obs, self.mask, self.kind, self.q), x_in)
        self._check(grad, t, "the guidance gradient")
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        c = (self.scale * sigma**2 / alpha).to(x.dtype)
        c = c.reshape(-1, *([1] * (x.ndim - 1))) if c.ndim else c
        out = x0.detach() - c * grad
        self._check(out, t, "the guided x0 prediction")
        return out

    def _check(self, v: Tensor, t, what: str) -> None:
        """Stop at the first non-finite value with a message naming the step and the time."""
        if bool(torch.isfinite(v).all()):
            return
        tt = float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0])
        where = f"denoiser call {self.calls}"
        if self.grid is not None and len(self.grid) > 1:
            # The step whose interval holds t (a multi-stage solver calls inside its step's interval).
            step = int((self.grid[:-1] >= tt - 1e-12).sum().clamp(min=1))
            where = f"step {step} of {len(self.grid) - 1} ({where})"
        raise FloatingPointError(
            f"guided sampling produced NaN/inf at {where}, diffusion time t={tt:.4g}: {what} is not finite. "
            f"Lower the guidance --scale (now {self.scale:g}), use more --num-steps or another --solver, or check "
            f"the model's weights and the data's scale"
        )


def sampling_bytes(rows: int, channels: int, length: int, hidden: int = 64, layers: int = 3) -> int:
    """Rough peak memory of one guided denoiser call over ``rows`` windows of (channels, length):
    the S4 net's activations kept for the guidance gradient (about 20 hidden-width tensors of the
    window length per block, from autograd's saved tensors) plus the sample, noise and
    observation copies, in float32."""
    return int(rows) * 4 * int(length) * (20 * int(hidden) * int(layers) + 8 * int(channels))


def check_sampling_size(den: Denoiser, batch: int, num_samples: int) -> None:
    """Refuse, before allocating, guided sampling of ``batch`` series x ``num_samples`` that cannot fit."""
    shape = den.sample_shape or (1, 1)
    net = getattr(getattr(den, "net", None), "config", None)
    need = sampling_bytes(batch * num_samples, shape[0], shape[-1], getattr(net, "hidden", 64), getattr(net, "layers", 3))
    checks.check_fits(need, f"guided sampling of {batch} series x {num_samples:,} samples", "lower --num-samples")


def guided_sample(
    den: Denoiser, obs: Tensor, mask: Tensor, num_samples: int, config: GuidanceConfig,
    cond: Tensor | None = None, generator: torch.Generator | None = None,
) -> Tensor:
    """``num_samples`` guided samples per row of ``obs`` (B, C, L): returns (B, S, C, L).

    Non-finite observations are refused; a non-finite value during sampling stops it with a
    FloatingPointError naming the step and the diffusion time."""
    b = obs.shape[0]
    check_sampling_size(den, b, num_samples)
    observed = mask.to(torch.bool)
    if not bool(torch.isfinite(torch.where(observed, obs, torch.zeros_like(obs))).all()):
        raise ValueError("the observed window holds NaN/inf (after scaling): check the series for huge values or gaps")
    rows = obs.repeat_interleave(num_samples, 0)
    model = ObservationGuided(
        den, rows, mask.repeat_interleave(num_samples, 0), config.scale, config.energy,
        sample_quantiles(b, num_samples, obs.device) if config.energy == "quantile" else None,
    )
    steps = config.num_steps or den.card.student_steps or 100
    noise = torch.randn(rows.shape, generator=generator, dtype=rows.dtype).to(rows.device)
    c = cond.repeat_interleave(num_samples, 0) if cond is not None else None
    grid = config.grid if config.solver != "auto" else None
    try:
        spec, n, g, _ = resolve_rule(den, config.solver, steps, grid)
        model.grid = sampling_grid(den.schedule, n, g, not spec.own_finish)
    except (ValueError, TypeError, KeyError):
        model.grid = None  # sample() below reports a bad solver or grid itself
    x = sample(model, noise, solver=config.solver, num_steps=steps, grid=grid, cond=c, generator=generator,
               denoise_to_zero=True)
    return x.reshape(b, num_samples, *obs.shape[1:])
