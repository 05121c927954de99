"""Continuous-time consistency objectives (sCM, rCM, TBCM): TrigFlow maps, the JVP tangent against
finite differences along the teacher ODE, zero loss at the exact consistency map, where gradients go,
short toy runs that move the 1-step student toward the teacher, and a checkpoint round trip."""

import json
import math
from dataclasses import replace
from itertools import pairwise

import pytest
import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, TrajectoryConfig, distill, make_objective, teacher_trajectories
from fewstep.core.distill.base import Batch, DistillModule, make_student
from fewstep.core.distill.continuous import (
    RCM,
    SCM,
    TBCM,
    scm_tangent,
    t_of_tau,
    tau_of_t,
    tau_range,
    tbcm_route_times,
    trig_F,
    trig_scale,
)
from fewstep.core.schedules import EDM, RectifiedFlow, VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import LearnableMeansGMM, MEANS, GaussianMixtureNet, MLPNet, gmm_data, gmm_teacher, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_denoiser(schedule, prediction, seed=0, double=False, boundary=None):
    torch.manual_seed(seed)
    net = MLPNet(2, 32, 4)
    return Denoiser(
        net.double() if double else net, schedule, prediction, sample_shape=(2,), num_classes=4, boundary=boundary
    )


# -- TrigFlow maps ----------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [VPDiscrete(), RectifiedFlow(), EDM()], ids=["vp", "rf", "edm"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_trigflow_state_and_consistency_function_are_x0(schedule, prediction):
    """y = x_t / c = cos(tau) x0 + sin(tau) eps, and f = cos y - sin F(y, tau) is the Denoiser's x0."""
    g = torch.Generator().manual_seed(0)
    den = mlp_denoiser(schedule, prediction, double=True)
    lo, hi = tau_range(schedule)
    tau = lo + (hi - lo) * torch.rand(16, generator=g, dtype=torch.float64)
    t = t_of_tau(schedule, tau)
    torch.testing.assert_close(tau_of_t(schedule, t), tau, rtol=0, atol=1e-9)
    x0, eps = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    x_t = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    y = x_t / trig_scale(schedule, t)[:, None]
    torch.testing.assert_close(y, torch.cos(tau)[:, None] * x0 + torch.sin(tau)[:, None] * eps)
    f = torch.cos(tau)[:, None] * y - torch.sin(tau)[:, None] * trig_F(den, y, tau, None)
    torch.testing.assert_close(f, den(x_t, t), rtol=1e-7, atol=1e-7)


def test_sampler_grid_follows_the_papers_times():
    sched = VPDiscrete()
    for steps in (1, 2, 4):
        grid = SCM().sampler(gmm_teacher(), steps).grid
        assert len(grid) == steps + 1 and grid[0] == sched.t_max and grid[-1] == 0.0
        assert all(b < a for a, b in pairwise(grid))
    for sigma_data in (1.0, 0.5):  # the mid time 1.1 read with unit noise, or in sCM's sigma_d = 0.5
        mid = torch.tensor(SCM(sigma_data=sigma_data).sampler(gmm_teacher(), 2).grid[1], dtype=torch.float64)
        assert math.isclose(float(torch.tan(tau_of_t(sched, mid))), sigma_data * math.tan(1.1), rel_tol=1e-6)
    taus = tbcm_route_times(sched, 2000, 16, 1.0, torch.Generator().manual_seed(0))
    lo, hi = tau_range(sched)
    assert float(taus.min()) >= lo and float(taus.max()) <= hi


# -- the tangent -----------------------------------------------------------------------------------
def test_scm_tangent_is_df_dtau_along_the_teacher_ode():
    """At r = 1, g = cos(tau) df/dtau with f the student's x0, the derivative taken along the teacher's
    PF-ODE dy/dtau = F_teacher: compare the JVP with central differences of f along the ODE."""
    teacher = gmm_teacher()
    student = mlp_denoiser(teacher.schedule, "eps", seed=1, double=True)
    g = torch.Generator().manual_seed(0)
    n = 8
    tau = 0.3 + 1.0 * torch.rand(n, generator=g, dtype=torch.float64)
    cond = torch.arange(n) % 4
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)

    def F_teacher(y_, tau_):
        return trig_F(teacher, y_, tau_, cond).double()

    def ode(y_, tau0, tau1, substeps=20):  # TrigFlow-Euler (DDIM) steps, accurate for tiny spans
        for i in range(substeps):
            a = tau0 + (tau1 - tau0) * i / substeps
            b = tau0 + (tau1 - tau0) * (i + 1) / substeps
            h = (a - b)[:, None]
            y_ = torch.cos(h) * y_ - torch.sin(h) * F_teacher(y_, a)
        return y_

    @torch.no_grad()
    def f(y_, tau_):
        return student(y_, t_of_tau(student.schedule, tau_), cond)

    h = 1e-3
    fd = (f(ode(y, tau, tau + h), tau + h) - f(ode(y, tau, tau - h), tau - h)) / (2 * h)
    for time_step, tol in ((None, 1e-2), (0.005, 3e-2)):  # full JVP, and rCM's semi-continuous mode
        df = scm_tangent(student, y, tau, cond, F_teacher(y, tau), r=1.0, time_step=time_step) / torch.cos(tau)[:, None]
        assert float((df - fd).norm() / fd.norm()) < tol, time_step
    # ... and it is not the partial derivative in tau alone (the ODE's dy/dtau matters).
    fd_frozen = (f(y, tau + h) - f(y, tau - h)) / (2 * h)
    assert float((df - fd_frozen).norm() / fd.norm()) > 0.1


class GaussianConsistencyNet(nn.Module):
    """The exact consistency map of a single Gaussian N(mu, s^2 I) under a VP schedule: its PF-ODE keeps
    z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2), so f(x_t, t) = mu + s z (an x0-prediction)."""

    def __init__(self, mu, s, schedule):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.s, self.schedule = s, schedule

    def forward(self, x, net_t, cond=None):
        t = self.schedule.timestep_to_t(net_t.double())
        a, sig = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
        return self.mu + self.s * (x - a * self.mu) / torch.sqrt(a**2 * self.s**2 + sig**2)


@pytest.mark.parametrize("method", ["scm", "rcm", "tbcm"])
def test_loss_vanishes_at_the_exact_consistency_map(method):
    sched, mu, s = VPDiscrete(), [0.5, -0.3], 0.3
    teacher = Denoiser(GaussianMixtureNet([mu], s, sched), sched, "x0", sample_shape=(2,)).eval()
    obj = make_objective(method, tangent_warmup=0.0, **({} if method == "rcm" else {"adaptive_weighting": False}))

    def loss_of(mu_student):
        student = Denoiser(GaussianConsistencyNet(mu_student, s, sched), sched, "x0", sample_shape=(2,))
        module = DistillModule(teacher, student, obj, total_iterations=10)
        gen = torch.Generator().manual_seed(0)
        if method == "tbcm":
            tr = teacher_trajectories(teacher, TrajectoryConfig(n=64, num_steps=16), progress=False)
            batch = Batch(x0=tr["traj"][:, -1], cond=None, traj=tr["traj"], traj_t=tr["traj_t"].expand(64, -1))
        else:
            x0 = torch.tensor(mu) + s * torch.randn(64, 2, generator=gen)
            batch = Batch(x0=x0.double(), cond=None)
        if method == "rcm":
            terms = obj.terms(module, batch, gen)
            return terms["scm"], terms["dmd"]
        return obj.loss(module, batch, gen), None

    exact, dmd = loss_of(mu)
    off, _ = loss_of([mu[0] + 0.2, mu[1]])
    assert float(exact.max()) < 1e-5 and float(off.mean()) > 1e-2
    if dmd is not None:  # the fake score starts as the teacher: no reverse-divergence push
        assert float(dmd.abs().max()) < 1e-10


# -- where gradients go ------------------------------------------------------------------------------
def _module(method, **opts):
    teacher = mlp_denoiser(VPDiscrete(), "eps", seed=3).eval()
    obj = make_objective(method, tangent_warmup=0.0, **opts)
    student = make_student(teacher, obj.student_spec(teacher), 1, obj.sampler(teacher, 1))
    module = DistillModule(teacher, student, obj, total_iterations=10)
    x0, y = gmm_data(32)
    if method == "tbcm":
        tr = teacher_trajectories(teacher, TrajectoryConfig(n=32, num_steps=6), progress=False)
        batch = Batch(tr["traj"][:, -1], tr["cond"], tr["traj"], tr["traj_t"].expand(32, -1))
    else:
        batch = Batch(x0, y)
    return teacher, module, batch


def _grads(params):
    return [p.grad for p in params]


@pytest.mark.parametrize("method", ["scm", "tbcm"])
def test_gradients_reach_student_and_weighting_only(method):
    teacher, module, batch = _module(method)
    module.objective.loss(module, batch, torch.Generator().manual_seed(0)).mean().backward()
    assert all(g is None for g in _grads(teacher.parameters()))
    assert all(g is not None for g in _grads(module.student.parameters()))
    assert all(g is not None for g in _grads(module.weight_net.parameters()))


def test_rcm_gradients_student_terms_and_critic_term_are_separate():
    teacher, module, batch = _module("rcm")
    with torch.no_grad():  # a fake score that differs from the teacher, so the DMD push is nonzero
        for p in module.critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    terms = module.objective.terms(module, batch, torch.Generator().manual_seed(0))
    student, critic = list(module.student.parameters()), list(module.critic.parameters())

    def grads(term, params):
        return torch.autograd.grad(terms[term].sum(), params, retain_graph=True, allow_unused=True)

    assert all(g is not None for g in grads("scm", student)) and all(g is None for g in grads("scm", critic))
    assert any(g is not None and g.abs().sum() > 0 for g in grads("dmd", student))
    assert all(g is None for g in grads("dmd", critic))
    assert all(g is None for g in grads("critic", student)) and all(g is not None for g in grads("critic", critic))
    assert not any(p.requires_grad for p in teacher.parameters())


# -- a short run on the 2-D toy moves the 1-step student toward the teacher ----------------------------
def _toy_run(tmp_path, method, steps, lr, **opts):
    teacher = gmm_teacher()
    if method == "rcm":
        sched = teacher.schedule
        teacher = Denoiser(LearnableMeansGMM(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,), num_classes=4).eval()
    obj = make_objective(method, **opts)
    cfg = DistillConfig(
        student_steps=1,
        train=TrainConfig(iterations=steps, batch_size=64, lr=lr, warmup_iterations=10, ema_decay=0.95, progress=False),
        trajectories=TrajectoryConfig(n=512),
    )
    torch.manual_seed(0)
    res = distill(
        teacher, obj, cfg, None, data=gmm_data(2048), work_dir=tmp_path, progress=False, student_net=MLPNet(2, 64, 4)
    )
    torch.manual_seed(0)
    untrained = make_student(
        teacher, replace(obj.student_spec(teacher), net=MLPNet(2, 64, 4)), 1, obj.sampler(teacher, 1)
    )
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(1000, 2, generator=g), torch.arange(1000) % 4
    ref = sample(teacher, noise, solver="dpmpp_2m", num_steps=30, cond=labels)
    return [sliced_wasserstein(sample(s.eval(), noise, cond=labels), ref) for s in (res.student, untrained)]


@pytest.mark.parametrize(
    "method, steps, lr, opts",
    [("scm", 80, 5e-3, {}), ("rcm", 60, 5e-3, {"tangent_warmup": 0.3}), ("tbcm", 100, 5e-3, {"route_shift": 1.0})],
)
def test_short_run_moves_one_step_student_toward_teacher(tmp_path, method, steps, lr, opts):
    trained, untrained = _toy_run(tmp_path, method, steps, lr, **opts)
    assert trained < 0.5 * untrained, (trained, untrained)


# -- a real net, a real checkpoint ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["scm", "rcm", "tbcm"])
def test_smoke_tiny_unet_checkpoint_round_trip(tmp_path, method):
    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (32,), generator=g))
    cfg = DistillConfig(
        student_steps=2,
        train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False),
        trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8),
    )
    res = distill(teacher, make_objective(method), cfg, tmp_path / "s", data=data, progress=False)
    loaded = load_denoiser(tmp_path / "s")
    assert loaded.card.sampler == res.student.card.sampler and loaded.card.sampler.solver == "consistency"
    assert loaded.card.provenance["distilled_by"] == method
    json.dumps(loaded.card.provenance["objective"])
    x = sample(loaded, torch.randn(4, 1, 8, 8, generator=g), cond=torch.arange(4) % 3, generator=g)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    assert loaded.nfe == 2


def test_objectives_are_registered_with_their_data_kinds():
    assert (SCM.data, RCM.data, TBCM.data) == ("real", "real", "trajectory")
    for name, cls in (("scm", SCM), ("rcm", RCM), ("tbcm", TBCM)):
        obj = make_objective(name)
        assert type(obj) is cls and obj.name == name
    with pytest.raises(ValueError):
        SCM(mid_times=(2.0,))
