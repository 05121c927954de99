"""Score-distillation objectives with a fake score (VSD / SwiftBrush + SNOOPI, SIM, Uni-Instruct): zero
generator gradient when the fake score is the teacher, SNOOPI's per-batch guidance draws, SIM's
surrogate gradient against the closed form for Gaussians, Uni-Instruct's f-weights and its reduction
to VSD, where gradients go, short toy runs that move a 1-step student onto every mode of the
mixture teacher, and a checkpoint round trip through distill()."""

import json
import math
from dataclasses import replace

import pytest
import torch

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import OBJECTIVES, DistillConfig, distill, make_objective
from fewstep.core.distill.base import Batch, DistillModule, make_student
from fewstep.core.distill.score_implicit import SIM, VSD, UniInstruct, f_weight, sim_generator_loss
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import LearnableMeansGMM, MEANS, GaussianMixtureNet, MLPNet, gmm_data, gmm_teacher, mode_coverage, sliced_wasserstein
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _gmm_param_teacher(means=MEANS, std=0.1) -> Denoiser:
    sched = VPDiscrete()
    return Denoiser(LearnableMeansGMM(means, std, sched), sched, "x0", sample_shape=(2,), num_classes=len(means)).eval()


def _module(obj, teacher=None, n=16, guidance=1.0, steps=1):
    teacher = teacher or _gmm_param_teacher()
    torch.manual_seed(0)
    student = make_student(
        teacher, replace(obj.student_spec(teacher), net=MLPNet(2, 32, 4)), steps, obj.sampler(teacher, steps)
    )
    module = DistillModule(teacher, student, obj, total_iterations=100, teacher_guidance=guidance)
    x0, y = gmm_data(n)
    return module, Batch(x0=x0 if obj.data == "real" else None, cond=y, n=n)


def _grads(term, params):
    return torch.autograd.grad(term.sum(), params, retain_graph=True, allow_unused=True)


def _perturb(net, scale=0.3):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))


# -- the defining properties ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "obj",
    [VSD(), VSD(guidance_range=(1.5, 4.0)), SIM(), UniInstruct(f="reverse-kl")],
    ids=["vsd", "vsd-snoopi", "sim", "uni-rkl"],
)
def test_generator_gradient_vanishes_when_fake_equals_real(obj):
    module, batch = _module(obj)
    student = list(module.student.parameters())
    terms = module.objective.terms(module, batch, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v).all() for v in terms.values())
    grads = _grads(terms["gen"], student)
    assert all(g is not None and g.abs().max() == 0 for g in grads)
    _perturb(module.critic)  # a fake score that differs: the generator is pushed
    terms = module.objective.terms(module, batch, torch.Generator().manual_seed(0))
    assert any(g.abs().sum() > 0 for g in _grads(terms["gen"], student))


def test_vsd_direction_is_the_unnormalised_score_difference():
    """VSD's gradient w.r.t. x is (D_fake - D_real)(x_t): w(t) (eps_real - eps_fake) with w = sigma / alpha."""
    module, batch = _module(VSD())
    _perturb(module.critic)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.Generator().manual_seed(3)
    d = module.objective.direction(module, x, batch.cond, g)
    g = torch.Generator().manual_seed(3)  # the same t and eps draws by hand
    sched = module.teacher.schedule
    from fewstep.core.distill.critic import sample_times

    t = sample_times(sched, 16, g, 0.02, 0.98)
    eps = torch.randn(16, 2, generator=g)
    x_t = sched.alpha(t).float()[:, None] * x.detach() + sched.sigma(t).float()[:, None] * eps
    a, s = sched.alpha(t).float()[:, None], sched.sigma(t).float()[:, None]
    eps_real = (x_t - a * module.teacher(x_t, t, batch.cond)) / s
    module.critic.eval()
    eps_fake = (x_t - a * module.critic(x_t, t, batch.cond)) / s
    torch.testing.assert_close(d, (s / a) * (eps_real - eps_fake), rtol=1e-4, atol=1e-5)
    from fewstep.core.distill.critic import dmd_loss

    (gx,) = torch.autograd.grad(dmd_loss(x, d).sum(), x)
    torch.testing.assert_close(gx, d / x[0].numel())  # critic.dmd_loss: the mean over dimensions


def test_snoopi_draws_one_guidance_per_batch_for_both_scores():
    lo, hi = 1.5, 4.0
    module, batch = _module(VSD(guidance_range=(lo, hi)))
    seen = {"teacher": [], "critic": []}

    def spy(who, den):
        forward = den.forward

        def wrapped(x, t, cond=None, guidance=None, kind="x0"):
            seen[who].append(guidance)
            return forward(x, t, cond, guidance, kind)

        den.forward = wrapped

    spy("teacher", module.teacher)
    spy("critic", module.critic)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        module.objective.loss(module, batch, g)
    teacher_w = seen["teacher"]
    critic_w = [w for w in seen["critic"] if w is not None]  # guided calls (its denoising loss is unguided)
    assert len(teacher_w) == 6 and critic_w == teacher_w  # the same scale for both, per batch
    assert all(lo <= w <= hi for w in teacher_w) and len(set(teacher_w)) == 6
    # the fake score also learns its unconditional score (labels dropped at uncond_prob)
    from fewstep.core.distill.score_implicit import drop_labels

    y = drop_labels(module.critic, torch.zeros(4000, dtype=torch.long), 0.1, torch.Generator().manual_seed(0))
    assert 0.07 < float((y == module.critic.num_classes).float().mean()) < 0.13


def test_sim_gradient_matches_the_closed_form_for_gaussians():
    """p = N(0, s^2 I), q = N(m, s^2 I): y = s_p - s_q = -alpha m / v_t is constant (v_t = alpha^2 s^2 +
    sigma^2), and d/dm of w(t) d(sigma y) with the fake's mean (Thm. 3.1's derivative of the score
    divergence in the generator's parameters) is -(sigma^2 / v_t) u; the surrogate's gradient w.r.t.
    the generator's mean equals it, at every t and eps."""
    s, c = 0.5, 0.3
    sched = VPDiscrete()
    m = torch.tensor([[0.7, -0.4]])
    real = Denoiser(GaussianMixtureNet([[0.0, 0.0]], s, sched), sched, "x0", sample_shape=(2,)).eval()
    fake = Denoiser(GaussianMixtureNet(m.tolist(), s, sched), sched, "x0", sample_shape=(2,)).eval()
    g = torch.Generator().manual_seed(0)
    for t_val in (0.1, 0.5, 0.9):
        n = 64
        mean = m.clone().requires_grad_(True)
        x = mean + s * torch.randn(n, 2, generator=g)  # the generator: a shifted Gaussian
        t = torch.full((n,), t_val, dtype=torch.float64)
        loss = sim_generator_loss(real, fake, x, t, torch.randn(n, 2, generator=g), None, c)
        (grad,) = torch.autograd.grad(loss.mean(), mean)
        a, sg = float(sched.alpha(t[0])), float(sched.sigma(t[0]))
        v = a * a * s * s + sg * sg
        m_q = m.clone().requires_grad_(True)  # the divergence's derivative through the fake score's mean
        y = sg * (-a * m_q / v)  # sigma (s_p - s_q), constant in x
        d = (sg / a) * (torch.sqrt(y.pow(2).sum() + c * c) - c)
        (expected,) = torch.autograd.grad(d, m_q)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        assert float((grad * m).sum()) > 0  # descent moves the generator's mean toward the teacher's


def test_f_weights_are_f_second_derivative_times_r_squared():
    fs = {
        "reverse-kl": lambda r: -torch.log(r),
        "kl": lambda r: r * torch.log(r),
        "jensen-shannon": lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
    }
    log_r = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for name, f in fs.items():
        r = log_r.exp().requires_grad_(True)
        (d1,) = torch.autograd.grad(f(r).sum(), r, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), r)
        torch.testing.assert_close(f_weight(name, log_r), d2 * r.detach() ** 2)


@pytest.mark.parametrize("f", ["reverse-kl", "kl", "jensen-shannon"])
def test_uni_instruct_is_vsd_up_to_a_positive_per_sample_factor(f):
    vsd_module, batch = _module(VSD())
    _perturb(vsd_module.critic)
    uni = UniInstruct(f=f)
    uni_module, _ = _module(uni)
    uni_module.critic.load_state_dict(vsd_module.critic.state_dict())
    if f != "reverse-kl":
        _perturb(uni_module.disc, 0.5)  # a non-trivial ratio estimate
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    d_vsd = vsd_module.objective.direction(vsd_module, x, batch.cond, torch.Generator().manual_seed(3))
    d_uni = uni.direction(uni_module, x, batch.cond, torch.Generator().manual_seed(3))
    factor = (d_uni * d_vsd).sum(1) / d_vsd.pow(2).sum(1)
    torch.testing.assert_close(d_uni, factor[:, None] * d_vsd, rtol=1e-5, atol=1e-6)
    assert (factor > 0).all()
    if f == "reverse-kl":
        torch.testing.assert_close(factor, torch.ones_like(factor))
        assert not hasattr(uni_module, "disc")
    else:
        assert factor.std() > 1e-3 and math.isclose(float(factor.mean()), 1.0, rel_tol=1e-4)  # batch-mean normalised


@pytest.mark.parametrize("obj", [VSD(guidance_range=(1.0, 3.0)), SIM(), UniInstruct()], ids=["vsd", "sim", "uni"])
def test_each_term_trains_its_own_network_only(obj):
    module, batch = _module(obj, steps=2)
    _perturb(module.critic)  # else the generator term is exactly zero
    terms = module.objective.terms(module, batch, torch.Generator().manual_seed(0))
    owners = {"gen": module.student, "critic": module.critic, "disc": getattr(module, "disc", None)}
    assert set(terms) == {"gen", "critic"} | ({"disc"} if isinstance(obj, UniInstruct) else set())
    for name, term in terms.items():
        for other, net in owners.items():
            if net is None:
                continue
            grads = _grads(term, list(net.parameters()))
            if other == name:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), (name, other)
            else:
                assert all(g is None for g in grads), (name, other)
    assert not any(p.requires_grad for p in module.teacher.parameters())


# -- a short run on the 2-D toy puts the 1-step student on every mode of the teacher ---------------------
@pytest.mark.parametrize(
    "obj",
    [VSD(critic_lr_scale=3.0), SIM(critic_lr_scale=3.0), UniInstruct(critic_lr_scale=3.0)],
    ids=["vsd", "sim", "uni-instruct-js"],
)
def test_short_run_covers_every_mode_of_the_teacher(tmp_path, obj):
    teacher = gmm_teacher()  # the exact analytic mixture: the fake score is a copy of the student's MLP
    cfg = DistillConfig(
        student_steps=1, train=TrainConfig(iterations=300, batch_size=64, lr=5e-3, warmup_iterations=10, ema_decay=0.95, progress=False)
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
    after, before = (sample(s.eval(), noise, cond=labels) for s in (res.student, untrained))
    assert mode_coverage(before) == 0.0 and mode_coverage(after) == 1.0
    sw_after, sw_before = sliced_wasserstein(after, ref), sliced_wasserstein(before, ref)
    assert sw_after < 0.2 and sw_after < 0.25 * sw_before, (sw_after, sw_before)
    assert all(math.isfinite(v) for v in res.losses)


# -- a real net, a real checkpoint ------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [VSD(guidance_range=(1.0, 2.0)), SIM(), UniInstruct(f="kl")], ids=["vsd", "sim", "uni"])
def test_smoke_tiny_unet_checkpoint_round_trip(tmp_path, obj):
    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (32,), generator=g))
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False))
    res = distill(teacher, obj, cfg, tmp_path / "s", data=data, progress=False)
    loaded = load_denoiser(tmp_path / "s")
    assert loaded.card.sampler == res.student.card.sampler and loaded.card.sampler.solver == "consistency"
    assert loaded.card.provenance["distilled_by"] == obj.name
    json.dumps(loaded.card.provenance["objective"])
    for k, v in res.student.net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v)
    x = sample(loaded, torch.randn(4, 1, 8, 8, generator=g), cond=torch.arange(4) % 3, generator=g)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and loaded.nfe == 2


# -- configuration -----------------------------------------------------------------------------------------
def test_options_are_validated():
    for bad in (
        {"guidance_range": (3.0, 1.0)},
        {"uncond_prob": 1.0},
        {"t_lo": 0.9, "t_hi": 0.1},
        {"critic_lr_scale": 0.0},
    ):
        with pytest.raises(ValueError):
            VSD(**bad)
    with pytest.raises(ValueError):
        SIM(huber_c=0.0)
    with pytest.raises(ValueError):
        UniInstruct(f="hellinger")
    assert (VSD.data, SIM.data, UniInstruct.data) == ("none", "none", "real")
    assert VSD(guidance_range=[1, 2]).guidance_range == (1.0, 2.0)
    parts = _module(UniInstruct(critic_lr_scale=2.0))[0].parts()
    assert [(p.name, p.lr_scale) for p in parts] == [("student", 1.0), ("critic", 2.0), ("disc", 2.0)]


@pytest.mark.parametrize("name, cls", [("vsd", VSD), ("sim", SIM), ("uni-instruct", UniInstruct)])
def test_registered_names(name, cls):
    if name not in OBJECTIVES:
        pytest.skip(f"{name!r} is not in the registry yet (the lead adds it)")
    obj = make_objective(name)
    assert type(obj) is cls and obj.name == name
