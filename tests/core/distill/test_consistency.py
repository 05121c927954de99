"""Discrete consistency family (CD/LCM, MLCM, Hyper-SD, SCott, SLAM) and the GAN head: the maths
against closed forms, where gradients go, short toy trainings, and a checkpoint round trip."""

import copy
from dataclasses import replace

import pytest
import torch

from fewstep.core.card import ModelCard, SamplerRule
from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import (
    Batch,
    DistillConfig,
    DistillModule,
    TrajectoryConfig,
    distill,
    make_objective,
    make_student,
    teacher_trajectories,
)
from fewstep.core.updates import noise_to
from fewstep.core.distill.consistency import (
    ConsistencyDistillation,
    HyperSD,
    MultistepConsistency,
    boundary_grid,
    current_segments,
    gamma_x0,
    segment_bounds,
    segment_end,
    segment_schedule,
    skip_grid,
    sub_path_point,
)
from fewstep.core.distill.gan import Discriminator, gan_losses, r1_penalty
from fewstep.core.updates import alpha_sigma, ddim_jump, ddim_x0, sde_step
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import ddim_step, sample
from fewstep.core.train import TrainConfig

from .toys import MEANS, GaussianMixtureNet, MLPNet, gmm_data, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ["cd", "mlcm", "hyper-sd", "scott", "slam"]


def uncond_teacher(means=MEANS, std=0.1) -> Denoiser:
    """The 2-D mixture teacher without labels (exact posterior mean), so one-step samples must split modes."""
    sched = VPDiscrete()
    return Denoiser(GaussianMixtureNet(means, std, sched), sched, "x0", sample_shape=(2,)).eval()


class ExactGaussianMap(torch.nn.Module):
    """The exact PF-ODE map to t = 0 of N(mu, s^2 I) data: f*(x_t) = mu + s (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2)."""

    def __init__(self, mu, s, schedule):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.s, self.schedule = s, schedule

    def forward(self, x, net_t, cond=None):
        t = self.schedule.timestep_to_t(net_t.double())
        a = self.schedule.alpha(t).float().view(-1, 1)
        sig = self.schedule.sigma(t).float().view(-1, 1)
        return self.mu + self.s * (x - a * self.mu) / torch.sqrt(a**2 * self.s**2 + sig**2)


# -- grids, segments, per-sample steps ------------------------------------------------------------------
def test_segments_and_grids():
    b = segment_bounds(10, 4)
    assert b.tolist() == [0, 2, 5, 8, 10]  # round(i * 10 / 4), half to even
    assert segment_end(torch.tensor([0, 1, 2, 4, 5, 9]), b).tolist() == [2, 2, 5, 5, 8, 10]
    ts = skip_grid(VPDiscrete(), 10)
    assert len(ts) == 11 and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all())
    assert boundary_grid(ts, 1) == [1.0, 0.0]
    assert boundary_grid(ts, 2) == [1.0, float(ts[5]), 0.0]
    assert segment_schedule((8, 4, 2, 1), 1) == [8, 4, 2, 1]
    assert segment_schedule((8, 4, 2, 1), 3) == [8, 4, 3]
    with pytest.raises(ValueError):
        segment_bounds(4, 8)


def test_ddim_jump_inverse_and_sde_step_match_the_solvers():
    sched = VPDiscrete()
    g = torch.Generator().manual_seed(0)
    x, x0, z = (torch.randn(6, 3, generator=g) for _ in range(3))
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    s = torch.tensor([0.5, 0.0, 0.2, 0.1, 0.0, 0.05], dtype=torch.float64)
    x_s = ddim_jump(sched, x, x0, t, s)
    assert torch.allclose(x_s[1], x0[1]) and torch.allclose(x_s[4], x0[4])  # s = 0 returns x0
    assert torch.allclose(ddim_x0(sched, x, t, x_s, s), x0, atol=1e-4)
    assert torch.allclose(sde_step(sched, x, x0, t, s, 0.0, z), x_s, atol=1e-6)

    class Fixed:  # a model returning a fixed x0, for the library's scalar-time DDIM
        schedule = sched

        def __call__(self, xx, tt):
            return x0[:1]

    for eta in (0.5, 1.0):
        gen = torch.Generator().manual_seed(3)
        ref = ddim_step(Fixed(), x[:1], t[0], s[0], eta, gen)
        noise = torch.randn(x[:1].shape, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(sde_step(sched, x[:1], x0[:1], t[:1], s[:1], eta, noise), ref.float(), atol=1e-5)
    a, sig = alpha_sigma(sched, torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert float(a[0]) == 1.0 and float(sig[0]) == 0.0


# -- losses vanish where theory says ------------------------------------------------------------------
def _module(teacher, student, objective, total=10):
    return DistillModule(teacher, student, objective, total)


def test_cd_loss_vanishes_for_the_exact_ode_map():
    """On Gaussian data the student f* = exact PF-ODE map is the fixed point: its CD loss is only the
    teacher's DDIM local error, O(h^2), so it falls >8x when the skip is 4x shorter; students that are
    not consistent (the teacher's own x0, a wrong map) keep an O(h) loss far above it."""
    sched, mu, s = VPDiscrete(), [0.3, -0.2], 0.5
    teacher = Denoiser(GaussianMixtureNet([mu], s, sched), sched, "x0", sample_shape=(2,)).eval()
    x0 = torch.tensor(mu) + s * torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))

    def loss(intervals, net):
        student = Denoiser(net, sched, "x0", sample_shape=(2,), card=ModelCard(student_steps=1))
        obj = ConsistencyDistillation(intervals=intervals)
        return float(obj.loss(_module(teacher, student, obj), Batch(x0, None), torch.Generator().manual_seed(1)).mean())

    exact = ExactGaussianMap(mu, s, sched)
    coarse, fine = loss(25, exact), loss(100, exact)
    assert fine < coarse / 8, (coarse, fine)  # second order: the loss is the DDIM local error
    for other in (GaussianMixtureNet([mu], s, sched), ExactGaussianMap([0.0, 0.0], 0.3, sched)):  # E[x0|x_t]; a wrong map
        assert loss(100, other) > 20 * fine


def _traj_batch(teacher, n=64, steps=16):
    tr = teacher_trajectories(teacher, TrajectoryConfig(n=n, solver="ddim", num_steps=steps, grid="uniform", batch_size=n), progress=False)
    traj = tr["traj"]
    return Batch(traj[:, -1], tr.get("cond"), traj, tr["traj_t"].expand(n, -1))


def test_segment_losses_vanish_for_the_teacher_with_one_segment_per_step():
    """With one segment per solver step the segment target is the teacher's own step, so a student
    equal to the teacher is exact (loss 0); with fewer, longer segments it is not."""
    teacher = uncond_teacher()
    batch = _traj_batch(teacher)
    gen = lambda: torch.Generator().manual_seed(0)

    def mlcm(segments, steps):
        student = Denoiser(copy.deepcopy(teacher.net), teacher.schedule, "x0", sample_shape=(2,), card=ModelCard(student_steps=steps))
        obj = MultistepConsistency(segments=(segments,))
        return obj.loss(_module(teacher, student, obj), batch, gen())

    assert float(mlcm(16, 16).abs().max()) < 1e-3
    assert float(mlcm(2, 2).mean()) > 0.05

    def hyper(segments, steps):
        student = Denoiser(copy.deepcopy(teacher.net), teacher.schedule, "x0", sample_shape=(2,), card=ModelCard(student_steps=steps))
        obj = HyperSD(segments=(segments,), intervals=10, dmd_weight=0.0)
        return obj.loss(_module(teacher, student, obj), Batch(gmm_data(256)[0], None), gen())

    assert float(hyper(10, 10).abs().max()) < 1e-3
    assert float(hyper(2, 2).mean()) > 0.05


def test_progressive_segments_follow_training_progress():
    teacher = uncond_teacher()
    student = Denoiser(MLPNet(2, 16), teacher.schedule, "x0", sample_shape=(2,), card=ModelCard(student_steps=1))
    module = _module(teacher, student, HyperSD(dmd_weight=0.0), total=100)
    seen = []
    for step in (0, 24, 25, 50, 75, 99):
        module.iteration.fill_(step)
        seen.append(current_segments(module, (8, 4, 2, 1)))
    assert seen == [8, 8, 4, 2, 1, 1]


def test_sub_path_points_and_gamma_one_is_the_plain_student():
    sched = VPDiscrete()
    g = torch.Generator().manual_seed(0)
    x_t, x_s = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    t = torch.tensor([0.9, 0.5, 0.3, 0.1], dtype=torch.float64)
    s = t - 0.05
    a_t, s_t = alpha_sigma(sched, t)
    a_s, s_s = alpha_sigma(sched, s)
    xg, sg = sub_path_point(sched, x_t, t, x_s, s, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(xg, x_t) and torch.allclose(sg, s_t)
    xg, sg = sub_path_point(sched, x_t, t, x_s, s, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(xg, x_s * (a_t / a_s).float()[:, None]) and torch.allclose(sg, s_s * a_t / a_s)
    # gamma = 1 reproduces the student's own forward, for a net with a gamma input and one without.
    unet = tiny_unet_denoiser()
    for teacher in (unet, uncond_teacher()):
        obj = make_objective("slam")
        spec = obj.student_spec(teacher)
        if teacher is not unet:
            spec = replace(spec, net=MLPNet(2, 16))
        student = make_student(teacher, spec, 1, obj.sampler(teacher, 1)).train()
        x = torch.randn(3, *teacher.sample_shape, generator=g)
        tt = torch.tensor([0.8, 0.4, 0.05], dtype=torch.float64)
        cond = torch.tensor([0, 1, 2]) if teacher.num_classes else None
        ref = student(x, tt, cond)
        out = gamma_x0(student, x, tt, alpha_sigma(sched, tt)[1], torch.ones(3, dtype=torch.float64), cond)
        assert torch.allclose(out, ref, atol=1e-5)
    assert student.guidance_embedded is False and make_student(unet, make_objective("slam").student_spec(unet), 1, SamplerRule("consistency")).guidance_embedded


# -- gradients go where they should --------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_only_trainable_parts(name):
    teacher = tiny_unet_denoiser()
    obj = make_objective(name)
    steps = 1
    student = make_student(teacher, obj.student_spec(teacher), steps, obj.sampler(teacher, steps))
    module = DistillModule(teacher, student, obj, total_iterations=4)
    g = torch.Generator().manual_seed(0)
    if name == "mlcm":
        batch = _traj_batch(teacher, n=6, steps=4)
    else:
        batch = Batch(torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2]))
    module.iteration.fill_(3)  # the last stage (Hyper-SD's one-step DMD term is on)
    loss = module(batch.x0, batch.cond, batch.traj, batch.traj_t, g)
    assert loss.shape == (6,) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in module.target.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.student.parameters())
    if name == "scott":
        assert all(p.grad is not None for p in module.disc.parameters())
    if name == "hyper-sd":
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.critic.parameters())


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_gan_losses_split_gradients(shape):
    torch.manual_seed(0)
    disc = Discriminator(shape, num_classes=3, width=16)
    fake = torch.randn(5, *shape, requires_grad=True)
    real = torch.randn(5, *shape)
    t, cond = torch.full((5,), 300.0), torch.tensor([0, 1, 2, 3, -1])  # 3 and -1: unconditional
    g, d = gan_losses(disc, fake, real, t, cond)
    assert g.shape == d.shape == (5,)
    g.sum().backward()
    assert fake.grad is not None and all(p.grad is None for p in disc.parameters())
    fake.grad = None
    d.sum().backward()
    assert fake.grad is None and all(p.grad is not None for p in disc.parameters())
    _, d2 = gan_losses(disc, fake, torch.randn(3, *shape), t, cond, real_t=torch.zeros(3), real_cond=torch.tensor([0, 1, 2]))
    assert d2.shape == (5,)
    assert r1_penalty(disc, real, t, cond).shape == (5,)


# -- a few hundred steps on the 2-D toy ------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    """The unlabelled mixture teacher, a student net fitted to it as a denoiser (the toy analogue of
    initialising the student from the teacher), reference samples and fixed noise."""
    teacher = uncond_teacher()
    x, _ = gmm_data(2048)
    torch.manual_seed(0)
    net = MLPNet(2, 64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    sched = teacher.schedule
    for _ in range(300):
        x0 = x[torch.randint(0, len(x), (256,), generator=g)]
        t = sched.t_min + (sched.t_max - sched.t_min) * torch.rand(256, generator=g, dtype=torch.float64)
        x_t = noise_to(sched, x0, t, torch.randn(256, 2, generator=g))
        loss = (net(x_t, sched.net_time(t).float()) - teacher(x_t, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref, _ = gmm_data(1500, seed=5)
    return teacher, x, net, ref, torch.randn(1500, 2, generator=torch.Generator().manual_seed(3))


TOY = {  # objective overrides, student steps, train steps: small skip grids so 1-step consistency propagates
    "cd": ({"intervals": 6}, 1, 500),
    "scott": ({"intervals": 8}, 1, 300),
    "slam": ({"intervals": 6}, 1, 500),
    "mlcm": ({}, 2, 400),
    "hyper-sd": ({"intervals": 8}, 1, 400),
}


@pytest.mark.parametrize("name", METHODS)
def test_toy_training_moves_the_student_to_the_teacher(name, toy, tmp_path):
    teacher, x, net, ref, noise = toy
    over, steps, iters = TOY[name]
    obj = make_objective(name, **over)
    before = make_student(teacher, replace(obj.student_spec(teacher), net=copy.deepcopy(net)), steps, obj.sampler(teacher, steps))
    gen = lambda: torch.Generator().manual_seed(1)
    sw0 = sliced_wasserstein(sample(before.eval(), noise, generator=gen()), ref)
    cfg = DistillConfig(student_steps=steps, train=TrainConfig(iterations=iters, batch_size=128, lr=2e-3, warmup_iterations=10, ema_decay=0.99, progress=False),
                        trajectories=TrajectoryConfig(n=1024, num_steps=16, batch_size=1024))
    res = distill(teacher, obj, cfg, None, data=(x, None), work_dir=tmp_path, student_net=copy.deepcopy(net), progress=False)
    sw = sliced_wasserstein(sample(res.student, noise, generator=gen()), ref)
    assert sw < 0.6 * sw0, (sw0, sw)


# -- a real net end to end: checkpoint, card, reload, sample --------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_tiny_unet_checkpoint_round_trip(name, tmp_path):
    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(32, 1, 8, 8, generator=g) * 2 - 1, torch.arange(32) % 3)
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False),
                        trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8))
    res = distill(teacher, make_objective(name), cfg, tmp_path / "s", data=data, progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.student_steps == 2 and student.card.sampler == res.student.card.sampler and student.card.provenance["distilled_by"] == name
    z = torch.randn(3, 1, 8, 8, generator=g)
    cond = torch.tensor([0, 1, 2])
    student.reset_counters()
    out = sample(student, z, cond=cond, generator=torch.Generator().manual_seed(0))
    ref = sample(res.student, z, cond=cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == z.shape and student.nfe == 2 and torch.allclose(out, ref, atol=1e-5)
    if name == "mlcm":  # the rule follows the trajectory grid the student trained on
        traj_t = teacher_trajectories(teacher, cfg.trajectories, progress=False)["traj_t"].double()
        assert student.card.sampler.grid == pytest.approx(boundary_grid(traj_t, 2))
