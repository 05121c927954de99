"""Decoupled DMD and Flash-DMD: the CA/DM split of the guided DMD gradient on the exact 2-D mixture
teacher, where gradients go for each term and ablation, the noise-level split of Flash-DMD, the reward
term, short toy runs that move a 1-step student toward the teacher, and a checkpoint round trip."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, distill
from fewstep.core.distill.base import Batch, DistillModule, make_student
from fewstep.core.updates import noise_to
from fewstep.core.distill.decoupled import (
    DecoupledDMD,
    FlashDMD,
    backward_simulate,
    ca_direction,
    dm_direction,
    shifted_times,
    time_shift,
)
from fewstep.core.distill.rewards import check_reward
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import MEANS, GaussianMixtureNet, MLPNet, gmm_data, mode_coverage, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


class LearnableGMM(nn.Module):
    """The exact x0-posterior of a Gaussian mixture sum_k N(mu_k, s_k^2 I) / K under a VP schedule, with
    means and per-component stds as parameters, so the fake score (a copy of the teacher) can track a
    student's distribution class by class. Label k selects component k; the null label the mixture."""

    def __init__(self, means, std, schedule):
        super().__init__()
        self.means = nn.Parameter(torch.as_tensor(means, dtype=torch.float32))  # (K, D)
        self.log_std = nn.Parameter(torch.full((len(means),), math.log(std)))  # (K,)
        self.schedule = schedule

    def forward(self, x, net_t, cond=None):
        t = self.schedule.timestep_to_t(net_t.double())
        a = self.schedule.alpha(t).float().view(-1, 1)  # (B, 1)
        s = self.schedule.sigma(t).float().view(-1, 1)
        std2 = self.log_std.exp().pow(2)[None]  # (1, K)
        var = a**2 * std2 + s**2  # (B, K)
        diff = x[:, None, :] - a[:, None, :] * self.means[None]  # (B, K, D)
        logits = -0.5 * diff.pow(2).sum(-1) / var - 0.5 * x.shape[1] * var.log()  # (B, K)
        k = self.means.shape[0]
        if cond is not None:
            own = torch.nn.functional.one_hot(cond.clamp(0, k - 1).long(), k).bool()
            null = (cond >= k) | (cond < 0)
            logits = torch.where(own | null[:, None], logits, torch.full_like(logits, -math.inf))
        post = self.means[None] + (a * std2 / var)[..., None] * diff  # (B, K, D)
        return (logits.softmax(-1)[..., None] * post).sum(1)


def toy_teacher() -> Denoiser:
    from fewstep.core.schedules import VPDiscrete

    sched = VPDiscrete()
    return Denoiser(LearnableGMM(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,), num_classes=4).eval()


def toy_module(obj, steps=1, seed=0, student_net=None):
    teacher = toy_teacher()
    torch.manual_seed(seed)
    spec = replace(obj.student_spec(teacher), net=student_net or MLPNet(2, 32, 4))
    student = make_student(teacher, spec, steps, obj.sampler(teacher, steps))
    return DistillModule(teacher, student, obj, total_iterations=10)


def toy_batch(n=32, seed=0):
    x0, y = gmm_data(n, seed=seed)
    return Batch(x0, y)


# -- the split itself ------------------------------------------------------------------------------------
def test_ca_is_w_minus_one_times_cond_minus_uncond_and_ca_plus_dm_is_guided_dmd():
    teacher = toy_teacher()
    g = torch.Generator().manual_seed(0)
    n, w = 64, 3.5
    x = 1.5 * torch.randn(n, 2, generator=g)
    cond = torch.arange(n) % 4
    t = shifted_times(teacher.schedule, n, g, 0.1, 0.9, 1.0)
    x_t = noise_to(teacher.schedule, x, t, torch.randn(n, 2, generator=g))
    with torch.no_grad():
        x0_c, x0_u = teacher(x_t, t, cond, 1.0), teacher(x_t, t, torch.full_like(cond, 4), 1.0)
    ca = ca_direction(teacher, x, x_t, t, cond, w, normalize=False)
    # x moves along -direction = (w - 1)(cond - uncond): the guidance direction, and it is not zero here.
    torch.testing.assert_close(-ca, (w - 1) * (x0_c - x0_u))
    assert float((x0_c - x0_u).norm(dim=1).mean()) > 0.1
    fake = Denoiser(
        LearnableGMM([[m[0] + 0.3, m[1]] for m in MEANS], 0.1, teacher.schedule), teacher.schedule, "x0", num_classes=4
    )
    dm = dm_direction(teacher, fake, x, x_t, t, cond, 1.0, normalize=False)
    guided = dm_direction(teacher, fake, x, x_t, t, cond, w, normalize=False)  # DMD with a CFG real score
    torch.testing.assert_close(ca + dm, guided, rtol=1e-5, atol=1e-5)
    # Normalised, each term is divided by DMD's per-sample mean |x - x0_cond|.
    wt = (x - x0_c).abs().mean(1, keepdim=True)
    torch.testing.assert_close(ca_direction(teacher, x, x_t, t, cond, w), ca / wt)


def test_dm_term_is_zero_when_fake_equals_real():
    module = toy_module(DecoupledDMD(terms=("dm",)))
    parts = module.objective.loss_terms(module, toy_batch(), torch.Generator().manual_seed(0))
    assert float(parts["dm"].abs().max()) == 0.0
    grads = torch.autograd.grad(parts["dm"].sum(), list(module.student.parameters()), allow_unused=True)
    assert all(gr is None or float(gr.abs().max()) == 0.0 for gr in grads)
    assert float(parts["critic"].mean()) > 0  # the fake score still trains on the student's samples


def _student_grads(module, loss):
    return torch.autograd.grad(loss.sum(), list(module.student.parameters()), retain_graph=True, allow_unused=True)


def test_terms_ablation_routes_gradients():
    """("dm",) carries exactly the DM gradient of ("ca", "dm") and no CA; ("ca",) exactly the CA one;
    the critic term reaches only the fake score; the teacher gets nothing."""
    full = toy_module(DecoupledDMD())
    with torch.no_grad():  # a fake score that differs from the teacher, so DM is not zero
        full.critic.net.means.add_(0.2)
    parts = full.objective.loss_terms(full, toy_batch(), torch.Generator().manual_seed(1))
    assert set(parts) == {"ca", "dm", "critic"}
    for terms in (("dm",), ("ca",)):
        ab = toy_module(DecoupledDMD(terms=terms))
        ab.student.load_state_dict(full.student.state_dict())
        if "dm" in terms:
            ab.critic.load_state_dict(full.critic.state_dict())
        else:
            assert not hasattr(ab, "critic")
        ab_parts = ab.objective.loss_terms(ab, toy_batch(), torch.Generator().manual_seed(1))
        (kept,) = terms
        dropped = "ca" if kept == "dm" else "dm"
        assert dropped not in ab_parts
        got, want, other = (
            _student_grads(ab, ab.objective.loss(ab, toy_batch(), torch.Generator().manual_seed(1))),
            _student_grads(full, parts[kept]),
            _student_grads(full, parts[dropped]),
        )
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        assert sum(float((a - c).abs().sum()) for a, c in zip(got, other)) > 1e-3  # not the dropped term's
    critic = list(full.critic.parameters())
    for k in ("ca", "dm"):
        assert all(
            gr is None for gr in torch.autograd.grad(parts[k].sum(), critic, retain_graph=True, allow_unused=True)
        )
    assert all(gr is None for gr in _student_grads(full, parts["critic"]))
    assert not any(p.requires_grad for p in full.teacher.parameters())


def test_options_are_validated():
    for bad in ({"terms": ("ca", "gan")}, {"terms": ()}, {"guidance": 1.0}, {"ca_t": (0.5, 0.2)}, {"dm_shift": 0.0}):
        with pytest.raises(ValueError):
            DecoupledDMD(**bad)
    DecoupledDMD(terms=("dm",), guidance=1.0)  # no CA: no guidance needed
    for bad in ({"split_t": 0.0}, {"reward_weight": -1.0}, {"dm_shift": -1.0}):
        with pytest.raises(ValueError):
            FlashDMD(**bad)
    uncond = Denoiser(GaussianMixtureNet(MEANS, 0.1), toy_teacher().schedule, "x0", sample_shape=(2,))
    with pytest.raises(ValueError, match="class-conditional"):
        DistillModule(
            uncond,
            make_student(uncond, DecoupledDMD().student_spec(uncond), 1, DecoupledDMD().sampler(uncond, 1)),
            DecoupledDMD(),
            1,
        )


def test_backward_simulation_runs_the_students_own_steps():
    obj = DecoupledDMD()
    module = toy_module(obj, steps=4)
    times = [float(t) for t in obj.sampler(module.teacher, 4).grid[:-1]]
    for step in range(4):
        module.iteration.fill_(step)
        x, t = backward_simulate(module, 8, torch.arange(8) % 4, torch.Generator().manual_seed(0))
        assert (
            x.shape == (8, 2)
            and x.requires_grad
            and torch.allclose(t, torch.full((8,), times[step], dtype=torch.float64))
        )


# -- Flash-DMD ---------------------------------------------------------------------------------------------
def test_flash_noise_levels_split_dm_above_and_gan_below_the_threshold():
    obj = FlashDMD(split_t=0.3)
    sched = toy_teacher().schedule
    t_split = sched.t_min + 0.3 * (sched.t_max - sched.t_min)
    g = torch.Generator().manual_seed(0)
    t_k = torch.tensor([sched.t_max] * 500 + [0.6] * 500 + [0.2] * 24, dtype=torch.float64)
    tau, active = obj.dm_times(sched, t_k, g)
    assert bool(active[:1000].all()) and not bool(active[1000:].any())  # late low-noise steps: no DM
    assert float(tau[:1000].min()) >= t_split and bool((tau[:1000] <= t_k[:1000]).all())
    mid = t_split + 0.5 * (sched.t_max - t_split)
    assert 0.27 < float((tau[:500] > mid).double().mean()) < 0.4  # dm_shift 0.5: 1/3 of a 1-step's draws
    assert float(obj.gan_times(sched, 1000, g).max()) < t_split


def test_flash_pixel_gan_only_sees_low_noise_and_each_network_gets_its_own_gradient():
    obj = FlashDMD(split_t=0.2, gan_weight=0.5)
    module = toy_module(obj)
    seen = []
    module.disc.register_forward_pre_hook(lambda m, args: seen.append(args[1].detach().clone()))
    parts = obj.loss_terms(module, toy_batch(), torch.Generator().manual_seed(0))
    sched = module.teacher.schedule
    limit = float(sched.net_time(torch.tensor(sched.t_min + 0.2 * (sched.t_max - sched.t_min), dtype=torch.float64)))
    assert len(seen) == 3 and all(float(s.max()) < limit for s in seen)  # generator, fake and real calls
    disc, critic = list(module.disc.parameters()), list(module.critic.parameters())

    def grads(k, params):
        return torch.autograd.grad(parts[k].sum(), params, retain_graph=True, allow_unused=True)

    assert any(gr is not None and gr.abs().sum() > 0 for gr in _student_grads(module, parts["gan_g"]))
    assert all(gr is None for gr in grads("gan_g", disc)) and all(gr is not None for gr in grads("gan_d", disc))
    assert all(gr is None for gr in _student_grads(module, parts["gan_d"]))
    assert all(gr is None for gr in grads("critic", disc)) and all(gr is not None for gr in grads("critic", critic))


def test_flash_reward_term_is_skipped_at_zero_weight_and_needs_a_reward_otherwise():
    module = toy_module(FlashDMD())
    assert "reward" not in module.objective.loss_terms(module, toy_batch(), torch.Generator().manual_seed(0))
    module = toy_module(FlashDMD(reward_weight=1.0))
    with pytest.raises(ValueError, match="no reward was given"):
        module.objective.loss(module, toy_batch(), torch.Generator().manual_seed(0))
    target = torch.tensor([2.0, 0.0])
    module.attach("reward", lambda x, cond: -(x - target).norm(dim=1))
    parts = module.objective.loss_terms(module, toy_batch(), torch.Generator().manual_seed(0))
    assert parts["reward"].shape == (32,) and _student_grads(module, parts["reward"])[0].abs().sum() > 0
    module.attach("reward", lambda x, cond: x.sum())  # not one value per sample
    with pytest.raises(ValueError, match="one value per sample"):
        module.objective.loss(module, toy_batch(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not differentiable"):
        check_reward(lambda x, cond: x.detach().sum(1), torch.zeros(4, 2))


# -- short runs on the 2-D toy ---------------------------------------------------------------------------
def _run(tmp_path, obj, steps=300, lr=3e-3, reward=None, seed=0):
    teacher = toy_teacher()
    cfg = DistillConfig(
        student_steps=1,
        train=TrainConfig(iterations=steps, batch_size=64, lr=lr, warmup_iterations=10, ema_decay=0.9, progress=False, seed=seed),
    )
    torch.manual_seed(seed)
    res = distill(
        teacher,
        obj,
        cfg,
        None,
        data=gmm_data(2048),
        work_dir=tmp_path,
        progress=False,
        student_net=MLPNet(2, 64, 4),
        reward=reward,
    )
    torch.manual_seed(seed)
    untrained = make_student(
        teacher, replace(obj.student_spec(teacher), net=MLPNet(2, 64, 4)), 1, obj.sampler(teacher, 1)
    )
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(1000, 2, generator=g), torch.arange(1000) % 4
    with torch.no_grad():
        ref = sample(teacher, noise, solver="dpmpp_2m", num_steps=30, cond=labels)
        xs = [sample(s.eval(), noise, cond=labels) for s in (res.student, untrained)]
    return xs, ref


# A small guidance: on this toy CFG pushes samples away from the other modes (see the next test), and
# the unguided teacher is the reference.
@pytest.mark.parametrize("obj", [DecoupledDMD(guidance=1.25), FlashDMD()], ids=["decoupled-dmd", "flash-dmd"])
def test_short_run_moves_one_step_student_toward_teacher(tmp_path, obj):
    (trained, untrained), ref = _run(tmp_path, obj)
    sw_t, sw_u = sliced_wasserstein(trained, ref), sliced_wasserstein(untrained, ref)
    assert sw_t < 0.4 * sw_u, (sw_t, sw_u)
    assert mode_coverage(trained) >= 0.75 and mode_coverage(untrained) <= 0.25, (
        mode_coverage(trained),
        mode_coverage(untrained),
    )


def test_ca_term_moves_samples_along_the_guidance_direction(tmp_path):
    """CA alone follows (w - 1)(cond - uncond), which on the mixture points away from the other
    classes: its samples end further out than the teacher's, and further with a larger w, while DM
    alone stays at the teacher's radius."""
    radius = {}
    for name, obj in (
        ("dm", DecoupledDMD(terms=("dm",))),
        ("ca2", DecoupledDMD(guidance=2.0)),
        ("ca3", DecoupledDMD(guidance=3.0)),
    ):
        (x, _), ref = _run(tmp_path / name, obj)
        radius[name] = float(x.norm(dim=1).mean())
    teacher_r = float(ref.norm(dim=1).mean())
    assert abs(radius["dm"] - teacher_r) < 0.25 * teacher_r, (radius, teacher_r)
    assert teacher_r * 1.2 < radius["ca2"] < radius["ca3"], (radius, teacher_r)


def test_reward_term_raises_the_reward(tmp_path):
    target = torch.tensor([1.0, 1.0])

    def reward(x, cond):  # -distance to one of the modes
        return -(x - target.to(x)).norm(dim=1)

    (plain, _), _ = _run(tmp_path / "plain", FlashDMD())
    (rewarded, _), _ = _run(tmp_path / "reward", FlashDMD(reward_weight=3.0), reward=reward)
    r_plain, r_reward = float(reward(plain, None).mean()), float(reward(rewarded, None).mean())
    assert r_reward > r_plain + 1.0, (r_plain, r_reward)  # -1.86 -> -0.01 (at this weight the reward wins)


# -- a real net, a real checkpoint -------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [DecoupledDMD(), FlashDMD(reward_weight=0.1)], ids=["decoupled-dmd", "flash-dmd"])
def test_checkpoint_round_trip_through_distill(tmp_path, obj):
    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (32,), generator=g))
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False))
    calls = []

    def reward(x, cond):
        calls.append(x.shape[0])
        return -x.pow(2).flatten(1).mean(1)

    res = distill(teacher, obj, cfg, tmp_path / "s", data=data, progress=False, reward=reward)
    loaded = load_denoiser(tmp_path / "s")
    assert loaded.card.provenance["distilled_by"] == obj.name and loaded.card.sampler == res.student.card.sampler
    assert json.loads(json.dumps(loaded.card.provenance["objective"]))["method"] == obj.name
    assert bool(calls) == (obj.name == "flash-dmd")
    from safetensors import safe_open

    ckpt = next((tmp_path / "s.work").glob("checkpoint*.safetensors"))
    with safe_open(str(ckpt), "pt") as f:  # trained parts are saved, the reward is not
        keys = list(f.keys())
    assert any("critic." in k for k in keys) and not any("reward" in k for k in keys)
    assert (obj.name == "flash-dmd") == any("disc." in k for k in keys)
    x = sample(loaded, torch.randn(4, 1, 8, 8, generator=g), cond=torch.arange(4) % 3, generator=g)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and loaded.nfe == 2
    # Resuming the finished run reads the checkpoint back (critic and discriminator included).
    res2 = distill(teacher, obj, cfg, tmp_path / "s", data=data, progress=False, reward=reward)
    assert res2.resumed_from == 2
    torch.testing.assert_close(res2.student.state_dict(), res.student.state_dict())


def test_time_shift_moves_mass_to_high_noise():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(time_shift(u, 1.0), u)
    assert bool((time_shift(u, 3.0) >= u).all()) and float(time_shift(torch.tensor(0.5), 3.0)) == 0.75
