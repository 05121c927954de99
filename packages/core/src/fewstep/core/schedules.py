"""Noise processes x_t = alpha(t) x0 + sigma(t) eps, each with closed-form alpha, sigma, lambda.

Every schedule is a frozen dataclass with the same methods (after Lu et al. 2022, DPM-Solver,
`NoiseScheduleVP`): ``alpha(t)``, ``sigma(t)``, ``lambda_(t) = log(alpha/sigma)`` (half-log-SNR)
and ``inverse_lambda``. Time runs from ``t_min`` (clean) to ``t_max`` (noise). ``net_time(t)``
is what a network is fed: a DDPM-like 0..1000 scale for every schedule, so one backbone serves all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

BETA_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _t(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (numpy.interp) that extrapolates the end segments."""
    xp, fp = xp.to(x.device, torch.float64), fp.to(x.device, torch.float64)
    xd = x.to(torch.float64)
    i = torch.searchsorted(xp, xd.clamp(xp[0], xp[-1]).contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return (f0 + (f1 - f0) * (xd - x0) / (x1 - x0)).to(x.dtype)


class Schedule:
    """Shared behaviour; subclasses define ``log_alpha``, ``sigma`` and ``inverse_lambda``."""

    kind: ClassVar[str]
    t_min: float
    t_max: float

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.exp(self.log_alpha(_t(t)))

    def lambda_(self, t: Tensor | float) -> Tensor:
        t = _t(t)
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def snr(self, t: Tensor | float) -> Tensor:
        return torch.exp(2 * self.lambda_(t))

    def net_time(self, t: Tensor) -> Tensor:
        """The time input a network sees (0..1000 scale)."""
        return 1000.0 * t

    @property
    def is_variance_preserving(self) -> bool:
        return False

    def input_scale(self, t: Tensor) -> Tensor | None:
        """Factor the network input is multiplied by (None = feed x_t as it is)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class VPDiscrete(Schedule):
    """DDPM's discrete betas (Ho et al. 2020) made continuous as in DPM-Solver (Lu et al. 2022, App. D).

    Step n in {0..N-1} sits at t_n = (n + 1) / N; log alpha is interpolated linearly between steps.
    """

    kind: ClassVar[str] = "vp_discrete"
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    num_train_timesteps: int = 1000

    def __post_init__(self):
        if self.beta_schedule not in BETA_KINDS:
            raise ValueError(f"beta_schedule={self.beta_schedule!r}; use one of {BETA_KINDS}")
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError("need 0 < beta_start <= beta_end < 1")

    @cached_property
    def betas(self) -> Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        if self.beta_schedule == "scaled_linear":  # Stable Diffusion's
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        # Nichol & Dhariwal 2021 cosine alpha-bar, betas capped at 0.999 (diffusers' convention).
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def _t_grid(self) -> Tensor:
        n = self.num_train_timesteps
        return torch.linspace(1.0 / n, 1.0, n, dtype=torch.float64)

    @cached_property
    def _log_alpha_grid(self) -> Tensor:
        return 0.5 * torch.log(self.alphas_cumprod)

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return 1.0 / self.num_train_timesteps

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return 1.0

    @property
    def is_variance_preserving(self) -> bool:
        return True

    def log_alpha(self, t: Tensor) -> Tensor:
        return _interp(t, self._t_grid, self._log_alpha_grid)

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt((-torch.expm1(2 * self.log_alpha(_t(t)))).clamp(min=0.0))

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return _interp(log_alpha, self._log_alpha_grid.flip(0), self._t_grid.flip(0))

    def timestep_to_t(self, n: Tensor | float) -> Tensor:
        """Discrete step index n (diffusers' ``timesteps``) -> continuous t."""
        return (_t(n).to(torch.float64) + 1.0) / self.num_train_timesteps

    def t_to_timestep(self, t: Tensor | float) -> Tensor:
        """Continuous t -> (fractional) discrete step index; round it for a discrete model."""
        return _t(t) * self.num_train_timesteps - 1.0

    def net_time(self, t: Tensor) -> Tensor:
        return self.t_to_timestep(t)


@dataclass(frozen=True)
class VPCosine(Schedule):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021, Eq. 17), as DPM-Solver uses it."""

    kind: ClassVar[str] = "vp_cosine"
    s: float = 0.008
    t_max: float = 0.9946  # alpha -> 0 at t = 1; stop before the singularity (DPM-Solver's choice)
    t_min: float = 1e-3

    def __post_init__(self):
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError("need 0 < t_min < t_max < 1 for the cosine schedule")

    def _log_alpha_0(self) -> float:
        return math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos((t + self.s) / (1 + self.s) * math.pi / 2)) - self._log_alpha_0()

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt((-torch.expm1(2 * self.log_alpha(_t(t)))).clamp(min=0.0))

    @property
    def is_variance_preserving(self) -> bool:
        return True

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        c = torch.exp(log_alpha + self._log_alpha_0()).clamp(-1.0, 1.0)
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(c) - self.s


@dataclass(frozen=True)
class EDM(Schedule):
    """EDM / VE: alpha = 1, sigma = t (Karras et al. 2022, Table 1)."""

    kind: ClassVar[str] = "edm"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return self.sigma_min

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return _t(t).clone()

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def net_time(self, t: Tensor) -> Tensor:
        # EDM's c_noise = log(sigma)/4, rescaled to the 0..1000 range the nets expect.
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return 1000.0 * (torch.log(t) - lo) / (hi - lo)

    def input_scale(self, t: Tensor) -> Tensor:
        """EDM's c_in = 1/sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022, Table 1)."""
        return 1.0 / torch.sqrt(t**2 + self.sigma_data**2)


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t (Liu et al. 2023; Lipman et al. 2023)."""

    kind: ClassVar[str] = "rectified_flow"
    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-4
    shift: float = 1.0  # SD3's timestep shift; t' = shift t / (1 + (shift - 1) t)

    def __post_init__(self):
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError("need 0 < t_min < t_max <= 1")
        if self.shift <= 0:
            raise ValueError("shift must be > 0")

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return _t(t).clone()

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)

    def shifted(self, t: Tensor) -> Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)


SCHEDULES: dict[str, type] = {c.kind: c for c in (VPDiscrete, VPCosine, EDM, RectifiedFlow)}


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict()`` (as stored in checkpoint cards)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; known: {sorted(SCHEDULES)}")
    cls = SCHEDULES[kind]
    known = {f for f in cls.__dataclass_fields__}
    extra = set(d) - known
    if extra:
        raise ValueError(f"schedule {kind!r} got unknown fields {sorted(extra)}")
    return cls(**d)


def from_diffusers(config: Any) -> tuple[Schedule, str]:
    """Read a diffusers scheduler (or its config dict) -> (schedule, prediction type).

    DDPM/DDIM/DPM-Solver/UniPC/Euler-style configs give ``VPDiscrete``; flow-matching configs give
    ``RectifiedFlow``; EDM configs give ``EDM``. Prediction types map to fewstep's names:
    ``epsilon`` -> ``eps``, ``sample`` -> ``x0``, ``v_prediction`` -> ``v``, flow -> ``flow``.
    """
    cfg = dict(getattr(config, "config", config))
    cls_name = cfg.get("_class_name", type(config).__name__)
    if "FlowMatch" in cls_name or cfg.get("prediction_type") == "flow_prediction":
        return RectifiedFlow(shift=float(cfg.get("shift", 1.0))), "flow"
    pred_map = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in pred_map:
        raise ValueError(f"diffusers prediction_type {pred!r} is not supported; use {sorted(pred_map)}")
    if "EDM" in cls_name:
        return (
            EDM(float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)), float(cfg.get("sigma_data", 0.5))),
            pred_map[pred],
        )
    if cfg.get("trained_betas") is not None:
        raise ValueError("schedulers with explicit trained_betas are not supported; give beta_schedule instead")
    schedule = VPDiscrete(
        beta_schedule=cfg.get("beta_schedule", "linear"),
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 2e-2)),
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
    )
    return schedule, pred_map[pred]
