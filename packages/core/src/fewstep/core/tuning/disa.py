"""DiSA: diffusion step annealing for autoregressive generators with a per-token diffusion head.

Zhao et al. 2025, "DiSA: Diffusion Step Annealing in Autoregressive Image Generation": in
MAR-style generators each token (or set of tokens) is sampled by a small diffusion head conditioned
on what was generated before. Later tokens are more constrained (lower variance, straighter
denoising paths), so they need fewer head steps: anneal from ``start`` (e.g. 50) at the first
autoregressive step to ``end`` (e.g. 5) at the last, linearly or along a cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..solvers import sample

KINDS = ("linear", "cosine")


def disa_steps(k: int, K: int, start: int = 50, end: int = 5, kind: str = "linear") -> int:
    """Head steps for autoregressive step k in [0, K) (DiSA, Zhao et al. 2025, step annealing).

    linear: start + (end - start) k / (K - 1); cosine: end + (start - end) (1 + cos(pi k / (K - 1))) / 2;
    rounded to the nearest integer. k = 0 gets ``start``, k = K - 1 gets ``end``.
    """
    if K < 1 or not 0 <= k < K:
        raise ValueError(f"need 0 <= k < K, got k={k}, K={K}")
    if not 1 <= end <= start:
        raise ValueError(f"need 1 <= end <= start, got start={start}, end={end}")
    if kind not in KINDS:
        raise ValueError(f"unknown annealing kind {kind!r}; use one of {KINDS}")
    u = k / (K - 1) if K > 1 else 0.0
    w = 1.0 - u if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * u))  # 1 at k = 0, 0 at k = K - 1
    return math.floor(end + (start - end) * w + 0.5)


@dataclass(frozen=True)
class DiSASchedule:
    """A DiSA step schedule (Zhao et al. 2025): ``start`` head steps annealed to ``end``."""

    start: int = 50
    end: int = 5
    kind: str = "linear"

    def __post_init__(self):
        if not 1 <= self.end <= self.start:
            raise ValueError(f"need 1 <= end <= start, got start={self.start}, end={self.end}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown annealing kind {self.kind!r}; use one of {KINDS}")

    def steps(self, k: int, K: int) -> int:
        """Head steps for autoregressive step k of K."""
        return disa_steps(k, K, self.start, self.end, self.kind)

    def all_steps(self, K: int) -> list[int]:
        """Head steps for every autoregressive step 0..K-1."""
        return [self.steps(k, K) for k in range(K)]

    def total(self, K: int) -> int:
        """Head steps summed over a K-step generation (NFE per sample for one-call-per-step solvers)."""
        return sum(self.all_steps(K))

    def speedup(self, K: int, baseline_steps: int | None = None) -> float:
        """Head-evaluation saving over a constant ``baseline_steps`` (default ``start``) per token."""
        return (baseline_steps or self.start) * K / self.total(K)


def sample_head(
    denoiser,
    noise: Tensor,
    k: int,
    K: int,
    schedule: DiSASchedule,
    solver: str = "ddim",
    grid: str = "logsnr",
    cond: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    **solver_opts,
) -> Tensor:
    """Sample the token(s) of autoregressive step k with the diffusion head at DiSA's step count."""

    return sample(denoiser, noise, solver, schedule.steps(k, K), grid, cond, guidance, generator, **solver_opts)
