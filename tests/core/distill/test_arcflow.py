"""ArcFlow: the closed-form momentum integral (analytic checks), the sampler's coordinates (equal
components = DDIM), a loss that vanishes on an exactly representable teacher, gradient isolation,
2-NFE quality on the Gaussian-mixture toy, and a checkpoint round trip on a tiny UNet."""

import math
from dataclasses import replace

import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, DistillModule, distill, make_student
from fewstep.core.distill.arcflow import ArcFlow, wide_student_net
from fewstep.core.schedules import RectifiedFlow, VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.solvers.arcflow import MomentumPolicy, split_output, wide_channels
from fewstep.core.train import TrainConfig

from .toys import MEANS, GaussianMixtureNet, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

# A momentum-mixture velocity field V(s) = sum_k w_k a_k exp(g_k (1 - s)), independent of x.
W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
A = torch.tensor([[1.0, -0.5], [0.4, 0.8], [-0.7, 0.3]], dtype=torch.float64)  # (K, C)
G = torch.tensor([0.0, 1.3, -2.0], dtype=torch.float64)


def field(s):
    """V(s) for s (B,) -> (B, C)."""
    return (W[None, :, None] * A[None] * torch.exp(G[None, :, None] * (1 - s.double())[:, None, None])).sum(1)


class MomentumFieldNet(nn.Module):
    """Wide=True: the ArcFlow output that represents V exactly at any source time s_src
    (u_k = a_k exp(g_k (1 - s_src)), logits log w, rates g); wide=False: V(s) as a plain flow net."""

    def __init__(self, wide=True, rate_error=0.0):
        super().__init__()
        self.wide, self.rate_error = wide, rate_error
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, net_t, cond=None):
        s = net_t.double() / 1000.0  # RectifiedFlow: net time = 1000 s
        if not self.wide:
            return field(s).float() + 0 * self.p
        u = A[None] * torch.exp(G[None, :, None] * (1 - s)[:, None, None])  # (B, K, C)
        logits = W.log()[None].expand(len(s), -1)
        rates = (G[1:] + self.rate_error)[None].expand(len(s), -1)
        return torch.cat([u.flatten(1), logits, rates], 1).float() + 0 * self.p


def rf_den(net, **kw):
    return Denoiser(net, RectifiedFlow(), "flow", sample_shape=(2,), **kw).eval()


# -- the closed form ---------------------------------------------------------------------------------
def test_closed_form_integral_matches_quadrature():
    g = torch.Generator().manual_seed(0)
    b, k, c = 3, 5, 2
    rates = torch.cat([torch.zeros(b, 1, 1), torch.randn(b, k - 1, 1, generator=g) * 2], 1).double()
    rates[0, 1] = 1e-7  # the series branch of (e^y - 1) / y
    pol = MomentumPolicy(torch.randn(b, k, c, generator=g).double(), torch.randn(b, k, 1, generator=g).double(), rates,
                         torch.full((b,), 0.9, dtype=torch.float64))
    s_a, s_b = torch.full((b,), 0.8, dtype=torch.float64), torch.full((b,), 0.3, dtype=torch.float64)
    grid = torch.linspace(0.3, 0.8, 2001, dtype=torch.float64)  # Simpson's rule, error ~1e-13
    vals = torch.stack([pol.velocity(s.expand(b)) for s in grid])  # (N, B, C)
    wts = torch.ones(2001, dtype=torch.float64)
    wts[1:-1:2], wts[2:-1:2] = 4, 2
    quad = (wts[:, None, None] * vals).sum(0) * (0.5 / 2000) / 3
    assert torch.allclose(pol.displacement(s_a, s_b), quad, atol=1e-10)
    assert torch.allclose(pol.mean_velocity(s_a, s_b), quad / 0.5, atol=1e-10)
    assert torch.allclose(pol.mean_velocity(s_a, s_a), pol.velocity(s_a), atol=1e-12)
    x = torch.randn(b, c, generator=g).double()  # integrating in two pieces = in one
    two_pieces = pol.integrate(pol.integrate(x, s_a, s_a - 0.2), s_a - 0.2, s_b)
    assert torch.allclose(two_pieces, pol.integrate(x, s_a, s_b), atol=1e-12)


def test_wide_output_layout():
    out = MomentumFieldNet()(torch.zeros(4, 2), torch.full((4,), 500.0))
    assert out.shape[1] == wide_channels(3, 2) == 11
    means, logits, rates = split_output(out, 2)
    assert means.shape == (4, 3, 2) and logits.shape == rates.shape == (4, 3, 1)
    assert float(rates[:, 0].detach().abs().max()) == 0


def test_sampler_is_exact_for_a_momentum_field():
    """Two ArcFlow steps land exactly where the ODE dx/ds = V(s) does; two Euler steps do not."""
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    s0 = RectifiedFlow().t_max
    grid = torch.tensor([s0, 0.5, 0.0], dtype=torch.float64)
    exact = z.double() * s0 - (W[:, None] * A * ((torch.exp(G) - torch.exp(G * (1 - s0))) / torch.where(G == 0, 1, G)
                                                  + (G == 0) * s0)[:, None]).sum(0)
    arc = sample(rf_den(MomentumFieldNet()), z, "arcflow", grid=grid)
    assert torch.allclose(arc.double(), exact, atol=1e-5)
    euler = sample(rf_den(MomentumFieldNet(wide=False)), z, "ddim", grid=grid)
    assert float((euler.double() - exact).abs().max()) > 0.05


def test_equal_components_without_rates_are_the_teachers_ddim():
    """A student whose K heads are the teacher's and whose rates are 0 is Euler in RF coordinates,
    i.e. the teacher's DDIM on the same grid: checks the VP <-> RF conversions and the head copy."""
    teacher = tiny_unet_denoiser()  # clip_x0 = 1: both clip every x0 (the policy each component's)
    obj = ArcFlow(components=3)
    net = wide_student_net(teacher.net, 3, (0.0, 0.0), noise=0.0)
    student = make_student(teacher, obj.student_spec(teacher).__class__(net=net), 2, obj.sampler(teacher, 2)).eval()
    z, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    grid = torch.tensor(student.card.sampler.grid, dtype=torch.float64)
    ref = sample(teacher, z, "ddim", grid=grid, cond=y)
    assert torch.allclose(sample(student, z, cond=y), ref, atol=1e-4)
    assert student.nfe == 2


# -- the loss ----------------------------------------------------------------------------------------
def arc_module(teacher, obj, net, total=10):
    spec = replace(obj.student_spec(teacher), net=net)
    return DistillModule(teacher, make_student(teacher, spec, 2, obj.sampler(teacher, 2)), obj, total)


def test_loss_vanishes_when_the_policy_is_the_teacher_flow():
    """On its own rollouts (teacher share 0, no window) a policy that is the teacher's flow has zero
    loss on every segment; a wrong rate does not."""
    teacher = rf_den(MomentumFieldNet(wide=False))
    obj = ArcFlow(components=3, window=0.0, teacher_decay=0.0)
    m = arc_module(teacher, obj, MomentumFieldNet())
    assert float(m(None, None, None, None, torch.Generator().manual_seed(0), n=64).detach().max()) < 1e-10
    wrong = arc_module(teacher, obj, MomentumFieldNet(rate_error=0.5))
    assert float(wrong(None, None, None, None, torch.Generator().manual_seed(0), n=64).detach().mean()) > 1e-4


def test_teacher_share_decays():
    obj = ArcFlow(teacher_decay=0.5)
    m = arc_module(rf_den(MomentumFieldNet(wide=False)), replace(obj, components=3), MomentumFieldNet(), total=10)
    shares = []
    for step in (0, 2, 5, 9):
        m.iteration.fill_(step)
        shares.append(obj.teacher_share(m))
    assert shares == [1.0, 0.6, 0.0, 0.0]


def test_gradients_reach_only_the_policy():
    teacher = tiny_unet_denoiser()
    obj = ArcFlow(components=4)
    m = DistillModule(teacher, make_student(teacher, obj.student_spec(teacher), 2, obj.sampler(teacher, 2)), obj, 10)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    m(None, cond, None, None, torch.Generator().manual_seed(0)).mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    w = m.student.net.conv_out.weight.grad  # (K*C + 2K - 1, ...): velocities, logits, rates all learn
    assert all(float(w[rows].abs().sum()) > 0 for rows in (slice(0, 4), slice(4, 8), slice(8, 11)))


# -- the toy -----------------------------------------------------------------------------------------
class WideMLP(nn.Module):
    def __init__(self, out, hidden=64):
        super().__init__()
        self.inp = nn.Linear(4, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out))

    def forward(self, x, net_t, cond=None):
        tt = net_t.float().view(-1, 1) / 1000.0
        return self.body(self.inp(torch.cat([x, torch.sin(3 * tt), torch.cos(3 * tt)], 1)))


def test_two_nfe_beats_the_teachers_two_euler_steps(tmp_path):
    sched = VPDiscrete()  # the unconditional mixture: a data-free batch carries only its size
    teacher = Denoiser(GaussianMixtureNet(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,)).eval()
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    ref = sample(teacher, z, "dpmpp_2m", 32)
    obj = ArcFlow(components=4, intermediate=2)
    grid = torch.tensor(obj.sampler(teacher, 2).grid, dtype=torch.float64)
    euler = sliced_wasserstein(sample(teacher, z, "ddim", grid=grid), ref)
    torch.manual_seed(0)
    spec = replace(obj.student_spec(teacher), net=WideMLP(wide_channels(4, 2)))
    untrained = make_student(teacher, spec, 2, obj.sampler(teacher, 2))
    torch.manual_seed(0)
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=200, batch_size=128, lr=2e-3, warmup_iterations=20, progress=False))
    net = WideMLP(wide_channels(4, 2))
    student = distill(teacher, obj, cfg, None, work_dir=tmp_path, progress=False, student_net=net).student
    student.reset_counters()
    sw = sliced_wasserstein(sample(student, z), ref)
    assert student.nfe == 2
    assert sw < 0.6 * euler and sw < 0.5 * sliced_wasserstein(sample(untrained, z), ref)


def test_smoke_checkpoint_round_trip(tmp_path):
    teacher = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, progress=False))
    distill(teacher, ArcFlow(components=4), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.sampler.solver == "arcflow" and student.net.config.out_channels == wide_channels(4, 1)
    assert student.schedule == teacher.schedule and math.isclose(student.card.sampler.grid[0], teacher.schedule.t_max)
    x = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and student.nfe == 2
