"""First-order samplers: DDIM (deterministic and stochastic)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..updates import ddim_jump, sde_step
from .common import Model


def ddim_step(
    model: Model, x: Tensor, t: Tensor, s: Tensor, eta: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """One DDIM step t -> s (Song et al. 2021, Eq. 12); eta = 1 is ancestral DDPM. One model call,
    then the shared update (``fewstep.core.updates``). Differentiable (no ``no_grad`` here), so
    distillation and pruning objectives can backpropagate through it."""
    x0 = model(x, t)
    if eta == 0:
        return ddim_jump(model.schedule, x, x0, t, s)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return sde_step(model.schedule, x, x0, t, s, eta, z)


@torch.no_grad()
def sample_ddim(model: Model, x: Tensor, ts: Tensor, eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12); eta = 1 is ancestral DDPM. Written with h = lambda_s - lambda_t."""
    for t, s in zip(ts[:-1], ts[1:]):
        x = ddim_step(model, x, t, s, eta, generator)
    return x
