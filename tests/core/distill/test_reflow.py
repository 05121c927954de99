"""Reflow and SlimFlow: RF coordinates, exact-coupling zero loss, gradient isolation, straightness and
one-step quality on the 2-D Gaussian-mixture toy, and a checkpoint round trip on a tiny UNet."""

import pytest
import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import Batch, DistillConfig, DistillModule, TrajectoryConfig, distill, make_student
from fewstep.core.distill.reflow import Reflow, SlimFlow, rf_time, schedule_time, teacher_velocity
from fewstep.core.prune.cost import param_count
from fewstep.core.schedules import RectifiedFlow, VPDiscrete
from fewstep.core.solvers import Bound, ddim_step, sample
from fewstep.core.train import TrainConfig

from .toys import MEANS, GaussianMixtureNet, MLPNet, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

TINY_TRAIN = TrainConfig(iterations=2, batch_size=4, progress=False)
TINY_TRAJ = TrajectoryConfig(n=8, num_steps=4, batch_size=8)


def gmm_uncond() -> Denoiser:
    """The toy mixture as an unconditional teacher: its 1-step sample is the mixture mean, far from
    every mode, so straightening shows."""
    sched = VPDiscrete()
    return Denoiser(GaussianMixtureNet(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,)).eval()


def module_for(teacher, objective, total=10, steps=1, net=None):
    from dataclasses import replace

    spec = objective.student_spec(teacher)
    if net is not None:
        spec = replace(spec, net=net)
    student = make_student(teacher, spec, steps, objective.sampler(teacher, steps))
    return DistillModule(teacher, student, objective, total)


def pair_batch(teacher, z, x0, cond=None):
    """A trajectory batch holding only the coupling: traj[:, 0] = sigma(t_max) z, traj[:, -1] = x0."""
    t_max = teacher.schedule.t_max
    traj = torch.stack([z * float(teacher.schedule.sigma(torch.tensor(t_max, dtype=torch.float64))), x0], 1)
    traj_t = torch.tensor([[t_max, 0.0]]).expand(len(z), 2)
    return Batch(x0=x0, cond=cond, traj=traj, traj_t=traj_t)


def toy_run(objective, tmp_path, steps=400, student_steps=1):
    torch.manual_seed(0)
    train = TrainConfig(iterations=steps, batch_size=256, lr=2e-3, warmup_iterations=20, progress=False)
    cfg = DistillConfig(student_steps=student_steps, train=train, trajectories=TrajectoryConfig(n=2048))
    net = MLPNet(2, 64, 0)
    return distill(gmm_uncond(), objective, cfg, None, work_dir=tmp_path, progress=False, student_net=net).student


def toy_noise(n=1000):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(5))


# -- RF coordinates ---------------------------------------------------------------------------------
def test_teacher_velocity_euler_is_ddim():
    """Euler in RF coordinates with the teacher's velocity is the teacher's DDIM step (any schedule)."""
    teacher = gmm_uncond()
    module = module_for(teacher, Reflow())
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    t, t2 = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    s, s2 = rf_time(teacher.schedule, t), rf_time(teacher.schedule, t2)
    assert torch.allclose(schedule_time(teacher.schedule, s), t, atol=1e-6)
    scale = lambda tt: float(teacher.schedule.alpha(tt) + teacher.schedule.sigma(tt))
    x_rf = x / scale(t)
    euler = x_rf - (s - s2).float() * teacher_velocity(module, x_rf, s.expand(64), None)
    ddim = ddim_step(Bound(teacher, None, 1.0), x, t, t2)
    assert torch.allclose(euler * scale(t2), ddim, atol=1e-5)


class LinearCoupling(nn.Module):
    """The exact RF velocity of the deterministic coupling x0 = m z: v(x_s, s) = (1 - m) x_s / ((1 - s) m + s)."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.p = nn.Parameter(torch.zeros(()))  # so the Denoiser has a parameter

    def forward(self, x, net_t, cond=None):
        s = (net_t.double() / 1000.0).view(-1, 1)
        return ((1 - self.m) * x.double() / ((1 - s) * self.m + s)).float() + 0 * self.p


def test_reflow_loss_vanishes_on_the_exact_straight_flow():
    teacher = gmm_uncond()
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(2))
    batch = pair_batch(teacher, z, 0.3 * z)
    gen = torch.Generator().manual_seed(0)
    exact = module_for(teacher, Reflow(), net=LinearCoupling(0.3))
    assert float(exact(batch.x0, None, batch.traj, batch.traj_t, gen).detach().max()) < 1e-8
    wrong = module_for(teacher, Reflow(), net=LinearCoupling(0.5))
    assert float(wrong(batch.x0, None, batch.traj, batch.traj_t, gen).detach().mean()) > 1e-2


def test_reflow_distill_stage_trains_at_the_grid_times():
    seen = []

    class Recorder(MLPNet):
        def forward(self, x, net_t, cond=None):
            seen.append(net_t.detach().clone())
            return super().forward(x, net_t, cond)

    teacher = gmm_uncond()
    z = torch.randn(32, 2)
    batch = pair_batch(teacher, z, z.sign())
    m = module_for(teacher, Reflow(distill_fraction=1.0), net=Recorder(2, 16, 0), steps=1)
    m(batch.x0, None, batch.traj, batch.traj_t, torch.Generator().manual_seed(0))
    assert torch.allclose(seen[-1].double(), torch.full((32,), 1000 * RectifiedFlow().t_max, dtype=torch.float64))
    m2 = module_for(teacher, Reflow(), net=Recorder(2, 16, 0))
    m2(batch.x0, None, batch.traj, batch.traj_t, torch.Generator().manual_seed(0))
    assert seen[-1].std() > 100  # plain reflow: s uniform in [0, 1]


@pytest.mark.parametrize("objective", [Reflow(), SlimFlow(reflow_fraction=0.5)])
def test_gradients_reach_only_the_student(objective):
    teacher = tiny_unet_denoiser()
    m = module_for(teacher, objective, total=4)
    x0 = torch.randn(4, 1, 8, 8)
    batch = pair_batch(teacher, torch.randn(4, 1, 8, 8), x0, torch.tensor([0, 1, 2, 0]))
    for step in (0, 3):  # SlimFlow: stage 1 (annealing reflow), then stage 2 (guided distillation)
        m.zero_grad(set_to_none=True)
        m.iteration.fill_(step)
        m(batch.x0, batch.cond, batch.traj, batch.traj_t, torch.Generator().manual_seed(step)).mean().backward()
        assert all(p.grad is None for p in teacher.parameters())
        if m.target is not None:
            assert all(p.grad is None for p in m.target.parameters())
        grads = [p.grad for p in m.student.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


# -- Reflow on the toy --------------------------------------------------------------------------------
def test_reflow_straightens_the_teacher_flow(tmp_path):
    teacher, z = gmm_uncond(), toy_noise()
    untrained = make_student(teacher, Reflow().student_spec(teacher), 1, Reflow().sampler(teacher, 1))
    untrained.net = MLPNet(2, 64, 0)
    student = toy_run(Reflow(), tmp_path)
    ref = sample(teacher, z, "dpmpp_2m", 32)

    def curvature(den, solver):  # mean distance of the 1-step from the 16-step result, same noise
        one = sample(den, z, solver, 1, grid="uniform", denoise_to_zero=True)
        many = sample(den, z, solver, 16, grid="uniform", denoise_to_zero=True)
        return float((one - many).norm(dim=1).mean())

    assert curvature(student, "ddim") < 0.35 * curvature(teacher, "ddim")
    sw, sw0, sw_teacher = (sliced_wasserstein(sample(d, z, "auto", 1), ref) for d in (student, untrained, teacher))
    assert sw < 0.6 * sw0 and sw < 0.3 * sw_teacher


def test_reflow_smoke_checkpoint_round_trip(tmp_path):
    teacher = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=2, train=TINY_TRAIN, trajectories=TINY_TRAJ)
    distill(teacher, Reflow(distill_fraction=0.5), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.schedule == RectifiedFlow() and student.prediction == "flow" and student.card.sampler.solver == "ddim"
    x = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and student.nfe == 2


# -- SlimFlow -----------------------------------------------------------------------------------------
def test_slimflow_student_is_a_smaller_rectified_flow():
    teacher = tiny_unet_denoiser()
    spec = SlimFlow().student_spec(teacher)
    assert spec.schedule == RectifiedFlow() and spec.prediction == "flow"
    assert spec.net.config.channels == teacher.net.config.channels // 2 and spec.net.config.label_dropout == 0
    assert param_count(spec.net) < 0.4 * param_count(teacher.net)


def test_slimflow_anneals_then_freezes_the_guide():
    teacher = gmm_uncond()
    obj = SlimFlow(reflow_fraction=0.5, anneal_fraction=0.6)
    m = module_for(teacher, obj, total=10, net=MLPNet(2, 16, 0))
    assert obj.switch_step(m) == 5 and obj.beta(m) == 1.0
    m.iteration.fill_(3)
    assert obj.beta(m) == 0.0  # annealed over 0.6 x 5 = 3 steps
    batch = pair_batch(teacher, torch.randn(8, 2), torch.randn(8, 2))
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)  # the stage-1 student now differs from the guide
    m.iteration.fill_(4)
    m(batch.x0, None, batch.traj, batch.traj_t, torch.Generator())
    assert not torch.equal(m.target.net.inp.weight, m.student.net.inp.weight)
    m(batch.x0, None, batch.traj, batch.traj_t, torch.Generator())  # step 5: the switch
    assert torch.equal(m.target.net.inp.weight, m.student.net.inp.weight)


def test_slimflow_one_step_beats_the_teachers_one_step(tmp_path):
    teacher, z = gmm_uncond(), toy_noise()
    ref = sample(teacher, z, "dpmpp_2m", 32)
    student = toy_run(SlimFlow(), tmp_path)
    untrained = make_student(teacher, SlimFlow().student_spec(teacher), 1, SlimFlow().sampler(teacher, 1))
    untrained.net = MLPNet(2, 64, 0)
    sw = sliced_wasserstein(sample(student, z), ref)
    assert sw < 0.3 * sliced_wasserstein(sample(teacher, z, "ddim", 1, denoise_to_zero=True), ref)
    assert sw < 0.6 * sliced_wasserstein(sample(untrained, z), ref)


def test_slimflow_smoke_checkpoint_round_trip(tmp_path):
    teacher = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=1, train=TINY_TRAIN, trajectories=TINY_TRAJ)
    distill(teacher, SlimFlow(), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.net.config.channels == 4 and param_count(student.net) < param_count(teacher.net)
    x = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and student.nfe == 1
