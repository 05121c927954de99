"""Every solver on every parametrisation, any input shape, with and without guidance."""

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import PREDICTIONS, Denoiser, convert
from fewstep.core.schedules import RectifiedFlow, VPCosine
from fewstep.core.solvers import SOLVERS, sample

from ..gaussian import GaussianX0

SHAPES = {"sequence": (3, 2, 16), "image": (3, 1, 4, 4), "video": (3, 2, 3, 4, 4)}


class Reparam(nn.Module):
    """The exact Gaussian denoiser, emitting its prediction as eps / v / flow / x0."""

    def __init__(self, schedule, kind):
        super().__init__()
        self.x0, self.schedule, self.kind = GaussianX0(schedule), schedule, kind

    def forward(self, x, net_time, cond=None):
        t = net_time.double() / 1000.0
        out = self.x0(x, net_time)
        if cond is not None:  # a label-dependent shift so guidance has an effect
            out = out + 0.1 * cond.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return convert(out, "x0", self.kind, x, self.schedule.alpha(t), self.schedule.sigma(t))


@pytest.mark.parametrize("solver", sorted(n for n, s in SOLVERS.items() if not s.student_only and n != "dmcmc"))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_any_shape_and_every_parametrisation_agree(solver, shape):
    sched = VPCosine()
    x_T = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = []
    for kind in PREDICTIONS:
        den = Denoiser(Reparam(sched, kind), sched, kind, sample_shape=shape[1:])
        x = sample(den, x_T, solver, num_steps=6, generator=torch.Generator().manual_seed(1), denoise_to_zero=True)
        assert x.shape == x_T.shape and torch.isfinite(x).all()
        outs.append(x)
    if not SOLVERS[solver].stochastic:  # the same exact model in four parametrisations: the same ODE solution
        for x in outs[1:]:
            assert torch.allclose(x, outs[0], atol=1e-8), solver


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc", "heun", "euler"])
def test_guidance_is_applied_inside_every_solver(solver):
    sched = RectifiedFlow()
    den = Denoiser(Reparam(sched, "flow"), sched, "flow", sample_shape=(1, 4), num_classes=3)
    x_T = torch.randn(6, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = sample(den, x_T, solver, num_steps=5, cond=y)
    guided = sample(den, x_T, solver, num_steps=5, cond=y, guidance=3.0)
    assert not torch.allclose(plain, guided)
    assert den.net_evals > den.nfe  # guided calls spend two network evaluations
