"""DMD and DMD2: the DM direction against the closed-form reverse-KL gradient of two Gaussians, where
gradients go, the two time-scale rule (critic-only steps leave the generator exactly unchanged),
backward simulation from the student's own rollout, a short DMD2 run that makes a 1-step MLP
generator cover the 2-D mixture's modes, and checkpoint round trips through distill()."""

import copy
import json

import pytest
import torch

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, TrajectoryConfig, distill
from fewstep.core.distill.base import Batch, DistillModule, make_student
from fewstep.core.distill.critic import FakeScoreGAN, dmd_direction, sample_times
from fewstep.core.distill.dmd import DMD, DMD2, backward_simulation
from fewstep.core.parts import Part
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import GaussianMixtureNet, MLPNet, gmm_data, gmm_teacher, mode_coverage, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the DM direction is the reverse-KL gradient ----------------------------------------------------
def gaussian(mu, s, sched):
    return Denoiser(GaussianMixtureNet([mu], s, sched), sched, "x0", sample_shape=(2,)).eval()


def test_dm_direction_is_the_reverse_kl_gradient_of_two_gaussians():
    """Generator G(z) = mu_f + s_f z, teacher N(mu_r, s_r^2 I), both scores exact. Undoing DMD's
    per-sample normaliser n = mean|x - x0_real(x_t)| (Eq. 8), direction * n = x0_fake - x0_real =
    w_t (s_fake - s_real)(x_t) with w_t = sigma_t^2 / alpha_t. Checked against closed forms:
    (a) per sample, E_eps at (x, t) = sigma_t^2 [(x - mu_r) / v_r - (x - mu_f) / v_f], v = alpha^2 s^2
    + sigma^2; (b) over generator samples, E_t of it equals E_t[(sigma_t / alpha_t)^2 dKL_t/dtheta]
    for theta = (mu_f, s_f), KL_t = KL(p_fake,t || p_real,t) between the diffused Gaussians."""
    torch.manual_seed(0)
    sched = VPDiscrete()
    mu_f, s_f, mu_r, s_r = torch.tensor([0.5, -0.3]), 0.6, torch.tensor([-0.2, 0.4]), 0.1
    real, fake = gaussian(mu_r.tolist(), s_r, sched), gaussian(mu_f.tolist(), s_f, sched)
    n_t, per_t = 16, 8000
    ts = sample_times(sched, n_t, torch.Generator().manual_seed(0)).sort().values  # (n_t,) in DMD's range
    t = ts.repeat_interleave(per_t)  # (N,)
    z = torch.randn(t.shape[0], 2)
    x = mu_f + s_f * z

    seed = 7
    direction = dmd_direction(real, fake, x, None, torch.Generator().manual_seed(seed), t=t)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # the same draw
    a, sig = sched.alpha(t).float()[:, None], sched.sigma(t).float()[:, None]
    x_t = a * x + sig * eps
    norm = (x - real(x_t, t)).abs().mean(1, keepdim=True).clamp(min=1e-4)
    diff = direction * norm  # x0_fake - x0_real = w_t (s_fake - s_real)
    v_f, v_r = a**2 * s_f**2 + sig**2, a**2 * s_r**2 + sig**2
    score_f, score_r = -(x_t - a * mu_f) / v_f, -(x_t - a * mu_r) / v_r  # exact scores at x_t
    torch.testing.assert_close(diff, sig**2 / a * (score_f - score_r), rtol=1e-3, atol=1e-4)

    # (a) E_eps at each (x, t): residual is zero-mean noise, linear in eps.
    closed = sig**2 * ((x - mu_r) / v_r - (x - mu_f) / v_f)
    resid = (diff - closed).view(n_t, per_t, 2)
    assert float(resid.mean(1).abs().max()) < 0.01
    assert float((diff - closed).pow(2).mean()) < 0.05 * float(closed.pow(2).mean())

    # (b) averaged over generator samples: the reverse-KL gradient of the diffused Gaussians.
    def kl(mu, s, tt):  # KL(N(a mu, v_f I) || N(a mu_r, v_r I)) in 2-D
        aa, ss = sched.alpha(tt), sched.sigma(tt)
        vf, vr = aa**2 * s**2 + ss**2, aa**2 * s_r**2 + ss**2
        return (vf / vr - 1 - torch.log(vf / vr)) + (aa**2 * (mu - mu_r.double()).pow(2).sum()) / (2 * vr)

    mu = mu_f.double().requires_grad_(True)
    s = torch.tensor(s_f, dtype=torch.float64, requires_grad=True)
    expected_mu, expected_s = torch.zeros(2, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for tt in ts:
        g_mu, g_s = torch.autograd.grad(kl(mu, s, tt), (mu, s))
        w = (sched.sigma(tt) / sched.alpha(tt)) ** 2
        expected_mu += w * g_mu / n_t
        expected_s += w * g_s / n_t
    got_mu = diff.double().mean(0)  # dG/dmu_f = I
    got_s = (diff.double() * z.double()).sum(1).mean(0)  # dG/ds_f = z
    torch.testing.assert_close(got_mu, expected_mu, rtol=0.03, atol=0.01)
    torch.testing.assert_close(got_s, expected_s, rtol=0.05, atol=0.01)
    assert float(expected_mu.norm()) > 0.1 and float(expected_s) > 0.05  # a real push, in both


def test_dm_direction_vanishes_when_the_fake_score_is_the_teacher():
    sched = VPDiscrete()
    real = gaussian([0.2, 0.1], 0.2, sched)
    x = torch.randn(64, 2)
    d = dmd_direction(real, copy.deepcopy(real), x, None, torch.Generator().manual_seed(0))
    assert float(d.abs().max()) == 0.0


# -- where gradients go, and the two time-scale rule ---------------------------------------------------
def _module(obj, steps=1, teacher=None):
    teacher = teacher or tiny_unet_denoiser()
    student = make_student(teacher, obj.student_spec(teacher), steps, obj.sampler(teacher, steps))
    return teacher, DistillModule(teacher, student, obj, total_iterations=20)


def _image_batch(n=8, seed=0, traj_steps=None, teacher=None):
    g = torch.Generator().manual_seed(seed)
    x0, y = torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1), torch.arange(n) % 3
    if traj_steps is None:
        return Batch(x0, y)
    sched = teacher.schedule
    ts = torch.linspace(sched.t_max, 0.0, traj_steps + 1, dtype=torch.float64)
    z = torch.randn(n, 1, 8, 8, generator=g) * float(sched.sigma(ts[:1]))
    traj = torch.stack([z] + [x0] * traj_steps, 1)
    return Batch(x0, y, traj, ts.float().expand(n, -1))


def _perturb(fake):
    with torch.no_grad():  # a fake score unlike the teacher, so the DM push is nonzero
        for p in fake.parameters():
            p.add_(0.05 * torch.randn_like(p))


def _grads(terms, key, params):
    gs = torch.autograd.grad(terms[key].sum(), params, retain_graph=True, allow_unused=True)
    return [g for g in gs if g is not None and g.abs().sum() > 0]


def test_dmd_gradients_reach_the_generator_or_the_fake_score():
    teacher, module = _module(DMD())
    _perturb(module.critic)
    terms = module.objective.terms(
        module, _image_batch(traj_steps=4, teacher=teacher), torch.Generator().manual_seed(0)
    )
    student, critic = list(module.student.parameters()), list(module.critic.parameters())
    for key in ("dm", "reg"):
        assert _grads(terms, key, student) and not _grads(terms, key, critic), key
    assert _grads(terms, "critic", critic) and not _grads(terms, "critic", student)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_dmd2_gan_head_sits_on_the_fake_score_and_gradients_separate():
    teacher, module = _module(DMD2(critic_updates=3, gan_weight=0.1))
    critic = module.critic
    _perturb(critic.fake)
    assert isinstance(critic, FakeScoreGAN) and critic.disc is None  # a head on the UNet's bottleneck
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(4, 1, 8, 8), sample_times(teacher.schedule, 4, g)
    assert critic.features(x_t, t).shape == (4, 16, 4, 4) and critic(x_t, t).shape == (4,)
    terms = module.objective.terms(module, _image_batch(), g)
    student = list(module.student.parameters())
    fake, head = list(critic.fake.parameters()), list(critic.head.parameters())
    decoder = [p for n, p in critic.fake.net.named_parameters() if n.startswith(("up.", "conv_out", "norm_out"))]
    for key in ("dm", "gan_g"):  # generator terms: the student only
        assert _grads(terms, key, student) and not _grads(terms, key, fake + head), key
    # The classifier trains the head and the fake score's encoder (not its decoder), never the student.
    assert len(_grads(terms, "gan_d", head)) == len(head) and _grads(terms, "gan_d", fake)
    assert not _grads(terms, "gan_d", decoder) and not _grads(terms, "gan_d", student)
    assert _grads(terms, "critic", fake) and not _grads(terms, "critic", student + head)


def test_critic_only_steps_leave_the_generator_unchanged_and_the_teacher_never_moves():
    """DMD2 declares its 3:1 rule as the critic's update ratio; on critic-only iterations the
    generator's terms are absent (no gradient), so even one AdamW over everything with Adam
    momentum leaves it where it is (the train loop does not even step its optimiser then)."""
    obj = DMD2(critic_updates=3, critic_lr_scale=2.0, gan_weight=0.1)
    teacher, module = _module(obj)
    assert module.parts() == (Part("student"), Part("critic", lr_scale=2.0, updates_per_student_update=3))
    teacher0 = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    moved = []
    for step in range(6):
        student0 = {k: v.clone() for k, v in module.student.state_dict().items()}
        critic0 = {k: v.clone() for k, v in module.critic.state_dict().items()}
        gen_step = obj.generator_step(module)
        assert gen_step == (step % 3 == 0)
        b = _image_batch(seed=step)
        loss = module(b.x0, b.cond, None, None, torch.Generator().manual_seed(step)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        same = all(torch.equal(student0[k], v) for k, v in module.student.state_dict().items())
        assert same != gen_step, step
        assert any(not torch.equal(critic0[k], v) for k, v in module.critic.state_dict().items())
        moved.append(not same)
    assert moved == [True, False, False, True, False, False] and int(module.iteration) == 6
    assert all(torch.equal(teacher0[k], v) for k, v in teacher.state_dict().items())


# -- backward simulation --------------------------------------------------------------------------------
def test_backward_simulation_is_the_students_own_consistency_rollout():
    """x_k equals consistency sampling of the student on its grid cut at t_k (``sample`` with the same
    generator returns the state re-noised to a final nonzero time)."""
    teacher = gmm_teacher()
    torch.manual_seed(1)
    obj = DMD2()
    student = make_student(teacher, obj.student_spec(teacher), 4, obj.sampler(teacher, 4)).train()
    student.net = MLPNet(2, 32, 4)
    grid = obj.grid(student)
    assert len(grid) == 5 and float(grid[0]) == teacher.schedule.t_max and float(grid[-1]) == 0.0
    z, cond = torch.randn(16, 2), torch.arange(16) % 4
    for k in range(4):
        x_k, t_k = backward_simulation(
            student,
            z * float(teacher.schedule.sigma(grid[:1])),
            torch.full((16,), k),
            grid,
            cond,
            torch.Generator().manual_seed(3),
        )
        assert torch.equal(t_k, grid[k].expand(16))
        ref = (
            z * float(teacher.schedule.sigma(grid[:1]))
            if k == 0
            else sample(
                student,
                z,
                solver="consistency",
                grid=grid[: k + 1],
                cond=cond,
                generator=torch.Generator().manual_seed(3),
            )
        )
        torch.testing.assert_close(x_k, ref)
    # Per-sample steps: each row stops at its own k (the noise draws are shared per stage).
    k = torch.arange(16) % 4
    x_k, t_k = backward_simulation(student, z, k, grid, cond, torch.Generator().manual_seed(3))
    for j in range(4):
        full, _ = backward_simulation(student, z, torch.full((16,), j), grid, cond, torch.Generator().manual_seed(3))
        torch.testing.assert_close(x_k[k == j], full[k == j])


class ConstantNet(torch.nn.Module):
    """x0 = c wherever it is asked (a learnable c), to trace where a rollout's states come from."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c))

    def forward(self, x, net_t, cond=None):
        return self.c.expand_as(x)


def test_dmd2_training_inputs_come_from_the_students_rollout_not_real_data():
    """The generator's input at step k >= 1 is alpha_k G(...) + sigma_k eps of the student's own
    outputs (here the constant c = 3), whatever the real data (here -5); step 0 is pure noise."""
    teacher = gmm_teacher()
    obj = DMD2(gan_weight=0.0)
    student = make_student(teacher, obj.student_spec(teacher), 4, obj.sampler(teacher, 4))
    student.net = ConstantNet([3.0, 3.0])
    module = DistillModule(teacher, student, obj, total_iterations=10)
    seen = []
    student.net.register_forward_hook(
        lambda m, args, out: seen.append((args[0].detach(), args[1].detach(), torch.is_grad_enabled()))
    )
    n = 4000
    batch = Batch(torch.full((n, 2), -5.0), torch.arange(n) % 4)
    module.objective.terms(module, batch, torch.Generator().manual_seed(0))
    first = next(i for i, s in enumerate(seen) if s[2])  # the call that trains the generator
    assert first == 3  # after K - 1 = 3 rollout calls without grad
    x_in, net_t, _ = seen[first]
    sched = teacher.schedule
    t = sched.timestep_to_t(net_t.double())
    grid = obj.grid(student)
    for j in range(4):
        rows = (t - grid[j]).abs() < 1e-6
        assert int(rows.sum()) > 700, j  # k is uniform over the 4 steps
        a, s = float(sched.alpha(grid[j])), float(sched.sigma(grid[j]))
        mean, std = x_in[rows].mean(0), x_in[rows].std(0)
        expected = 0.0 if j == 0 else 3.0 * a  # pure noise at t_max, else the student's own output re-noised
        assert float((mean - expected).abs().max()) < 0.1 and float((std - s).abs().max()) < 0.1, j


# -- a short DMD2 run on the 2-D mixture ------------------------------------------------------------------
def _toy_run(tmp_path, obj, steps=300):
    """(untrained, trained, teacher) 1-step samples of 2000 labelled noises on the 2-D mixture."""
    teacher = gmm_teacher()
    train = TrainConfig(iterations=steps, batch_size=128, lr=1e-2, warmup_iterations=10, ema_decay=0.9, progress=False)
    cfg = DistillConfig(student_steps=1, train=train, trajectories=TrajectoryConfig(n=1024))
    torch.manual_seed(0)
    net = MLPNet(2, 64, 4)
    res = distill(teacher, obj, cfg, None, data=gmm_data(4096), work_dir=tmp_path, progress=False, student_net=net)
    torch.manual_seed(0)
    untrained = make_student(teacher, obj.student_spec(teacher), 1, obj.sampler(teacher, 1))
    untrained.net = MLPNet(2, 64, 4)
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(2000, 2, generator=g), torch.arange(2000) % 4
    ref = sample(teacher, noise, solver="dpmpp_2m", num_steps=30, cond=labels)
    return (*(sample(s.eval(), noise, cond=labels) for s in (untrained, res.student)), ref)


def test_dmd2_short_run_makes_a_one_step_generator_cover_the_modes(tmp_path):
    """300 steps (60 generator updates under the 5:1 two time-scale rule) take a random 1-step MLP
    generator to all four modes of the class-conditional mixture. The fake score is a copy of the
    student's net (the analytic teacher has no weights) and the GAN head a ``gan.Discriminator``.
    (With critic_updates=1 the same run reached one mode of four: the fake score must lead.)"""
    before, after, ref = _toy_run(tmp_path, DMD2(gan_weight=0.05, disc_weight=0.1))
    assert mode_coverage(before) == 0.0 and mode_coverage(after) == 1.0
    sw_before, sw_after = sliced_wasserstein(before, ref), sliced_wasserstein(after, ref)
    assert sw_after < 0.2 and sw_after < 0.25 * sw_before, (sw_after, sw_before)


def test_dmd_short_run_moves_a_one_step_generator_to_the_teacher(tmp_path):
    """DMD on cached teacher pairs: regression + DM; the random-init fake score trains at 5x."""
    before, after, ref = _toy_run(tmp_path, DMD(reg_weight=1.0, critic_lr_scale=5.0))
    assert mode_coverage(before) == 0.0 and mode_coverage(after) == 1.0
    sw_before, sw_after = sliced_wasserstein(before, ref), sliced_wasserstein(after, ref)
    assert sw_after < 0.25 and sw_after < 0.35 * sw_before, (sw_after, sw_before)


# -- checkpoints through distill() ---------------------------------------------------------------------------
@pytest.mark.parametrize("obj, steps", [(DMD(), 1), (DMD2(critic_updates=2), 2)], ids=["dmd", "dmd2"])
def test_checkpoint_round_trip_and_resume(tmp_path, obj, steps):
    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (32,), generator=g))

    def cfg(n):
        return DistillConfig(
            student_steps=steps,
            train=TrainConfig(iterations=n, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False),
            trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8),
        )

    first = distill(teacher, obj, cfg(2), tmp_path / "s", data=data, progress=False)
    res = distill(teacher, obj, cfg(2), tmp_path / "s", data=data, progress=False)  # the same run again: resumed, done
    assert first.resumed_from == 0 and res.resumed_from == 2
    loaded = load_denoiser(tmp_path / "s")
    assert loaded.card.provenance["distilled_by"] == obj.name and loaded.nfe == 0 and loaded.card.student_steps == steps
    json.dumps(loaded.card.provenance["objective"])
    assert loaded.card.sampler == res.student.card.sampler and loaded.card.sampler.solver == "consistency"
    for a, b in zip(loaded.net.state_dict().values(), res.student.net.state_dict().values()):
        assert torch.equal(a, b)
    x = sample(loaded, torch.randn(4, 1, 8, 8, generator=g), cond=torch.arange(4) % 3, generator=g)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and loaded.nfe == steps


def test_options_are_validated():
    assert (DMD.name, DMD.data, DMD2.name, DMD2.data) == ("dmd", "trajectory", "dmd2", "real")
    for bad in ({"distance": "lpips"}, {"reg_weight": -1.0}, {"t_lo": 0.9, "t_hi": 0.1}):
        with pytest.raises(ValueError):
            DMD(**bad)
    for bad in ({"critic_updates": 0}, {"gan_weight": -1.0}, {"critic_lr_scale": 0.0}):
        with pytest.raises(ValueError):
            DMD2(**bad)
    with pytest.raises(ValueError, match="one-step"):
        _module(DMD(), steps=2)
    assert _module(DMD2())[1].parts()[1] == Part("critic", updates_per_student_update=5) and isinstance(_module(DMD2(gan_weight=0.0))[1].critic, Denoiser)
