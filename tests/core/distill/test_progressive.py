"""Progressive distillation (Salimans & Ho 2022) and guided distillation (Meng et al. 2023)."""

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.distill import DistillConfig, DistillModule, distill, make_objective, make_student
from fewstep.core.distill.progressive import (
    GuidedProgressiveDistillation,
    ProgressiveDistillation,
    guided_x0,
    round_plan,
)
from fewstep.core.updates import alpha_sigma, ddim_jump, ddim_x0
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import Bound, ddim_step, sample
from fewstep.core.train import TrainConfig

from .toys import MEANS, GaussianMixtureNet, MLPNet, gmm_data, gmm_teacher, mode_coverage, sliced_wasserstein
from ..tiny import tiny_unet_denoiser


def _module(teacher, objective, steps, total):
    student = make_student(teacher, objective.student_spec(teacher), steps, objective.sampler(teacher, steps))
    return DistillModule(teacher, student, objective, total)


def _tiny_batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 3


def _toy_samples(den, n=1000, guidance=None, **kw):
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 2, generator=g)
    return sample(den, noise, cond=torch.arange(n) % 4, guidance=guidance, **kw)


def _train_cfg(steps, batch=64, lr=1e-3):
    return DistillConfig(student_steps=1, train=TrainConfig(iterations=steps, batch_size=batch, lr=lr, warmup_iterations=10, ema_decay=0.99, progress=False))


# -- the maths ---------------------------------------------------------------------------------------
def test_round_plan_halves_down_to_k():
    assert round_plan(1, 32) == [16, 8, 4, 2, 1]
    assert round_plan(4, 16) == [8, 4]
    assert round_plan(3, 32) == [24, 12, 6, 3]  # teacher 48 >= 32 steps
    assert round_plan(8, 4) == [8]  # one round: 16 teacher steps into 8


@pytest.mark.parametrize("last", [False, True])
def test_one_student_ddim_step_lands_on_two_teacher_steps(last):
    """x_tilde (Alg. 2) is the x0 whose single DDIM step t -> t'' reproduces the teacher's two."""
    teacher = gmm_teacher()
    sched = teacher.schedule
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 2, generator=g)
    t, t1 = torch.full((64,), 0.6, dtype=torch.float64), torch.full((64,), 0.45, dtype=torch.float64)
    t2 = torch.full((64,), 0.0 if last else 0.3, dtype=torch.float64)
    with torch.no_grad():
        z1 = ddim_jump(sched, z, teacher(z, t), t, t1)
        # our per-sample DDIM is the solver's DDIM
        ref = ddim_step(Bound(teacher, None, 1.0), z, t[0], t1[0])
        torch.testing.assert_close(z1, ref, atol=1e-5, rtol=1e-5)
        z2 = ddim_jump(sched, z1, teacher(z1, t1), t1, t2)
        x_tilde = ddim_x0(sched, z, t, z2, t2)
        one = ddim_jump(sched, z, x_tilde, t, t2)
    torch.testing.assert_close(one, z2, atol=1e-4, rtol=1e-4)
    a, s = alpha_sigma(sched, t2)
    assert (float(a[0]), float(s[0])) == ((1.0, 0.0) if last else (float(sched.alpha(t2[0])), float(sched.sigma(t2[0]))))


@pytest.mark.parametrize("steps", [1, 2])
def test_auto_prediction_is_v_for_eps_teachers_and_keeps_the_teachers_function(steps):
    from fewstep.core.distill import student_for

    teacher = tiny_unet_denoiser()  # eps-prediction
    student = student_for(teacher, ProgressiveDistillation(), steps)
    module = DistillModule(teacher, student, ProgressiveDistillation(), 10)
    assert module.student.prediction == module.target.prediction == "v"
    assert module.student.reparam.net_prediction == "eps"
    x, y = _tiny_batch()
    t = torch.full((4,), 0.5, dtype=torch.float64)  # alpha(0.5) = 0.28, above the floor: exact
    torch.testing.assert_close(student.eval()(x, t, y), teacher.eval()(x, t, y), rtol=1e-4, atol=1e-5)
    assert student_for(teacher, ProgressiveDistillation(prediction="eps"), 1).prediction == "eps"
    assert student_for(gmm_teacher(), ProgressiveDistillation(), 1).prediction == "x0"


# -- rounds, resume, gradients ----------------------------------------------------------------------
def test_rounds_refresh_round_teacher_and_only_student_gets_grads():
    teacher = tiny_unet_denoiser()
    obj = ProgressiveDistillation(start_steps=8)
    module = _module(teacher, obj, 1, total=30).train()  # rounds [4, 2, 1] at steps 0, 10, 20
    x, y = _tiny_batch()
    gen = torch.Generator().manual_seed(0)
    assert obj.round_of(module) == (0, 4)
    module(x, y, None, None, gen).mean().backward()  # round 0: the real teacher
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in module.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())

    with torch.no_grad():  # the student moves during round 0 ...
        for p in module.student.parameters():
            p.add_(0.01)
    module.iteration.fill_(10)
    module.zero_grad(set_to_none=True)
    module(x, y, None, None, gen).mean().backward()  # ... and is the round-1 teacher
    assert obj.round_of(module) == (1, 2) and int(module.pd_round) == 1
    for pt, ps in zip(module.target.parameters(), module.student.parameters()):
        assert torch.equal(pt, ps.detach())
        assert pt.grad is None
    assert all(p.grad is None for p in teacher.parameters())

    # Resume: a fresh module loaded mid-round keeps its round teacher (no refresh).
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(0.01)
    again = _module(teacher, obj, 1, total=30)
    again.load_state_dict({**state, "student.net.conv_in.bias": module.state_dict()["student.net.conv_in.bias"]})
    again.iteration.fill_(15)
    again(x, y, None, None, gen)
    assert torch.equal(again.target.net.conv_in.bias, state["target.net.conv_in.bias"])
    again.iteration.fill_(20)
    again(x, y, None, None, gen)  # round 2 begins: refresh
    assert int(again.pd_round) == 2 and torch.equal(again.target.net.conv_in.bias, again.student.net.conv_in.bias)


def test_pd_toy_one_step_student_approaches_teacher(tmp_path):
    teacher = gmm_teacher()
    x, y = gmm_data(2048)
    ref = _toy_samples(teacher, solver="ddim", num_steps=64, denoise_to_zero=True)
    obj = ProgressiveDistillation(start_steps=8)
    torch.manual_seed(0)
    net = MLPNet(2, 64, 4)
    untrained = make_student(teacher, replace(obj.student_spec(teacher), net=copy.deepcopy(net)), 1, obj.sampler(teacher, 1))
    res = distill(teacher, obj, _train_cfg(240), None, data=(x, y), work_dir=tmp_path, student_net=net, progress=False)
    s = _toy_samples(res.student)
    sw, sw0 = sliced_wasserstein(s, ref), sliced_wasserstein(_toy_samples(untrained.eval()), ref)
    assert sw < 0.4 * sw0, (sw, sw0)
    assert mode_coverage(s) == 1.0


# -- guided distillation ------------------------------------------------------------------------------
def test_stage1_loss_vanishes_when_student_is_teacher_at_w1():
    teacher = tiny_unet_denoiser()
    obj = GuidedProgressiveDistillation(w_min=1.0, w_max=1.0, prediction=None)
    module = _module(teacher, obj, 2, total=10).eval()  # eval: both clip x0 the same way
    assert module.student.guidance_embedded
    x, y = _tiny_batch(8)
    loss = module(x, y, None, None, torch.Generator().manual_seed(0))
    assert float(loss.detach().max()) < 1e-9
    # and the two-pass guided target differs from the plain conditional x0 once w != 1
    t = torch.full((8,), 0.5, dtype=torch.float64)
    w3 = guided_x0(teacher, x, t, y, torch.full((8,), 3.0))
    assert float((w3 - teacher(x, t, y)).abs().max()) > 1e-3
    torch.testing.assert_close(w3, teacher(x, t, y, 3.0), atol=1e-5, rtol=1e-5)


def test_guided_student_costs_one_net_eval_per_call():
    teacher = tiny_unet_denoiser()
    obj = GuidedProgressiveDistillation()
    student = _module(teacher, obj, 2, total=10).student.eval()
    x, y = _tiny_batch(4)
    teacher.reset_counters()
    teacher(x, 0.5, y, 3.0)
    assert teacher.net_evals == 2  # CFG: conditional + null pass
    student.reset_counters()
    student(x, 0.5, y, 3.0)
    assert (student.nfe, student.net_evals) == (1, 1)
    student.reset_counters()
    out = sample(student, torch.randn(4, 1, 8, 8), cond=y, guidance=3.0)
    assert student.net_evals == 2 and out.shape == (4, 1, 8, 8)


def test_stage2_gradients_and_round_teacher_takes_w():
    teacher = tiny_unet_denoiser()
    obj = GuidedProgressiveDistillation(start_steps=4, stage1_share=0.5)
    module = _module(teacher, obj, 1, total=10).train()
    x, y = _tiny_batch()
    module.iteration.fill_(5)  # first iteration of stage 2: the round teacher is the stage-1 student
    with torch.no_grad():
        module.student.net.guidance_mlp[2].bias.add_(0.1)
    module(x, y, None, None, torch.Generator().manual_seed(0)).mean().backward()
    assert int(module.pd_round) == 1
    assert torch.equal(module.target.net.guidance_mlp[2].bias, module.student.net.guidance_mlp[2].bias.detach())
    assert all(p.grad is None for p in list(teacher.parameters()) + list(module.target.parameters()))
    assert module.student.net.guidance_mlp[2].weight.grad.abs().sum() > 0


class GuidedGMMNet(nn.Module):
    """A toy w-conditioned student net: the exact conditional GMM x0 plus (w - 1) times a learnt
    correction, so that at w = 1 it is the teacher (as the zero-initialised guidance MLP makes it)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(guidance_embed=True)
        self.gmm = GaussianMixtureNet(MEANS, 0.1, VPDiscrete())
        self.emb = nn.Embedding(5, 64)
        self.inp = nn.Linear(6, 64)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, net_t, cond=None, guidance=None):
        base = self.gmm(x, net_t, cond)
        w = torch.as_tensor(1.0 if guidance is None else guidance, dtype=x.dtype).expand(x.shape[0]).view(-1, 1)
        tt = net_t.float().view(-1, 1) / 1000.0
        h = self.inp(torch.cat([x, base, torch.sin(3 * tt), torch.cos(3 * tt)], 1)) + self.emb(cond.clamp(max=4))
        return base + (w - 1) * self.body(h)


def test_guided_toy_student_reproduces_guided_teacher(tmp_path):
    teacher = gmm_teacher()
    x, y = gmm_data(2048)
    obj = GuidedProgressiveDistillation(w_min=1.0, w_max=4.0, stage1_share=1.0, prediction=None)
    torch.manual_seed(0)
    res = distill(teacher, obj, _train_cfg(250), None, data=(x, y), work_dir=tmp_path, student_net=GuidedGMMNet(), progress=False)
    student = res.student
    g = torch.Generator().manual_seed(3)
    x0, c = gmm_data(512, seed=5)
    t = 0.2 + 0.6 * torch.rand(512, generator=g, dtype=torch.float64)
    z = teacher.schedule.alpha(t).float()[:, None] * x0 + teacher.schedule.sigma(t).float()[:, None] * torch.randn(512, 2, generator=g)
    with torch.no_grad():
        want = teacher(z, t, c, 3.0)
        err = (student(z, t, c, 3.0) - want).pow(2).sum(1).mean()
        err_unguided = (teacher(z, t, c, 1.0) - want).pow(2).sum(1).mean()
    assert err < 0.25 * err_unguided, (float(err), float(err_unguided))


# -- through the runner: checkpoint, card, sampler round trip ------------------------------------------
@pytest.mark.parametrize("method, steps", [("pd", 2), ("pd", 1), ("guided-pd", 2)])
def test_smoke_distill_saves_and_reloads(tmp_path, method, steps):
    teacher = tiny_unet_denoiser()
    x, y = _tiny_batch(16)
    cfg = DistillConfig(student_steps=steps, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False))
    res = distill(teacher, make_objective(method, start_steps=4), cfg, tmp_path / "s", data=(x, y), progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.sampler.solver == "ddim" and student.card.student_steps == steps
    assert student.card.sampler.grid[-1] == 0.0 and len(student.card.sampler.grid) == steps + 1
    assert student.prediction == "v" and student.reparam == res.student.reparam  # the conversion round-trips
    assert student.reparam.net_prediction == "eps" and student.reparam.alpha_floor == cfg.alpha_floor
    assert student.guidance_embedded == (method == "guided-pd")
    noise = torch.randn(3, 1, 8, 8)
    cond = torch.arange(3)
    student.reset_counters()
    out = sample(student, noise, cond=cond, guidance=2.0 if method == "guided-pd" else None)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert student.net_evals == steps
    torch.testing.assert_close(out, sample(res.student, noise, cond=cond, guidance=2.0 if method == "guided-pd" else None))



def test_guided_student_samples_at_the_guidance_it_was_trained_for(tmp_path):
    """The defect: a guided-PD student was sampled at w = 1 (no guidance) though trained on w in
    [w_min, w_max]. Its card now carries the range, it samples at ``w_sample`` by default, and a
    scale outside the range is refused."""
    teacher = tiny_unet_denoiser()
    x, y = _tiny_batch(16)
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False))
    obj = make_objective("guided-pd", start_steps=4, w_min=1.5, w_max=3.0, w_sample=2.5)
    distill(teacher, obj, cfg, tmp_path / "s", data=(x, y), progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.guidance == 2.5 and student.card.provenance["guidance_range"] == [1.5, 3.0]
    noise, cond = torch.randn(3, 1, 8, 8), torch.arange(3)
    torch.testing.assert_close(sample(student, noise, cond=cond), sample(student, noise, cond=cond, guidance=2.5))
    assert not torch.allclose(sample(student, noise, cond=cond), sample(student, noise, cond=cond, guidance=1.5))
    with pytest.raises(ValueError, match=r"trained for w in \[1.5, 3\]"):
        sample(student, noise, cond=cond, guidance=1.0)
    with pytest.raises(ValueError, match="w_sample"):
        make_objective("guided-pd", w_min=1.0, w_max=2.0, w_sample=3.0)
