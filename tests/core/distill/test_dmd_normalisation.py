"""One normalisation of the DMD update across objectives (issue: dmd divided its loss by D,
consistency by sqrt(D), the rest summed, and Decoupled DMD had its own copy of the Eq. 8 weight)."""

import copy
import re
from pathlib import Path

import torch

import fewstep.core.distill as distill_pkg
from fewstep.core.distill.critic import dmd_loss, dmd_normaliser
from fewstep.core.distill.decoupled import dm_direction

from ..tiny import tiny_unet_denoiser


def test_dmd_loss_gradient_is_the_direction_over_the_dimension():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 1, 8, 8), (3, 3, 16, 16)]:
        x = torch.randn(*shape, generator=g).requires_grad_(True)
        d = torch.randn(*shape, generator=g)
        dmd_loss(x, d).sum().backward()
        torch.testing.assert_close(x.grad, d / x[0].numel())


def test_no_objective_rescales_the_dmd_loss_or_recomputes_the_eq8_weight():
    root = Path(distill_pkg.__file__).parent
    for f in root.glob("*.py"):
        src = f.read_text()
        # the loss is added as it is, times the objective's weight: never divided by a size
        assert not re.search(r"dmd_loss\([^()]*(\([^()]*\))*[^()]*\)\s*/", src), f"{f.name} divides dmd_loss"
        if f.name != "critic.py":  # the Eq. 8 weight lives in critic.dmd_normaliser only
            assert ".abs().flatten(1).mean(1).clamp(min=1e-4)" not in src, f"{f.name} recomputes DMD's weight"


def test_decoupled_dm_direction_uses_the_shared_normaliser():
    real = tiny_unet_denoiser(seed=0).eval()
    fake = copy.deepcopy(real)
    with torch.no_grad():
        for p in fake.parameters():
            p.add_(0.01)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g).clamp(-1, 1)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    x_t = 0.6 * x + 0.8 * torch.randn(4, 1, 8, 8, generator=g)
    cond = torch.arange(4) % 3
    with torch.no_grad():
        x0_real, x0_fake = real(x_t, t, cond), fake.eval()(x_t, t, cond)
        want = (x0_fake - x0_real) / dmd_normaliser(x, x0_real)
        torch.testing.assert_close(dm_direction(real, fake, x, x_t, t, cond), want)
