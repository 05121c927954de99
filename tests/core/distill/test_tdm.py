"""TDM: each step's distribution-matching term vanishes when the fake score is the teacher, every step
draws its noise levels (DM and fake-score training) inside its own grid interval, gradients go where
they should, and a few hundred steps on the 2-D toy move a 2-step student to the teacher."""

from dataclasses import replace

import pytest
import torch

import fewstep.core.distill.tdm as tdm_mod
from fewstep.core.distill import DistillConfig, distill, make_student
from fewstep.core.distill.base import Batch, DistillModule
from fewstep.core.distill.tdm import TDM, interval_times, step_interval
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import learnable_gmm_teacher, MLPNet, sliced_wasserstein

pytestmark = pytest.mark.usefixtures("one_thread")


def teacher():
    return learnable_gmm_teacher(4)


def module_for(obj, steps, seed=0):
    tea = teacher()
    torch.manual_seed(seed)
    student = make_student(tea, replace(obj.student_spec(tea), net=MLPNet(2, 32, 4)), steps, obj.sampler(tea, steps))
    return DistillModule(tea, student, obj, total_iterations=10)


def batch(n=32):
    return Batch(x0=None, cond=torch.arange(n) % 4, n=n)


def test_each_steps_dm_term_vanishes_when_fake_equals_real():
    module = module_for(TDM(), steps=3)
    terms = module.objective.terms(module, batch(), torch.Generator().manual_seed(0))
    assert len(terms["dm"]) == 3 and len(terms["critic"]) == 3
    assert all(float(d.abs().max()) < 1e-10 for d in terms["dm"])
    with torch.no_grad():  # a fake score that is no longer the teacher: every step is pushed
        module.critic.net.means.add_(0.3)
    terms = module.objective.terms(module, batch(), torch.Generator().manual_seed(0))
    assert all(float(d.mean()) > 1e-3 for d in terms["dm"])


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_time_ranges_lie_in_each_steps_interval(steps, monkeypatch):
    obj = TDM()
    module = module_for(obj, steps=steps)
    sched, grid = module.student.schedule, obj.grid(module)
    assert len(grid) == steps + 1 and grid[0] == sched.t_max and grid[-1] == 0.0
    for k in range(steps):
        lo, hi = step_interval(sched, grid, k)
        t = interval_times(sched, grid, k, 2000, torch.Generator().manual_seed(k))
        assert lo >= sched.t_min and float(t.min()) >= lo and float(t.max()) <= hi
        assert float(t.max() - t.min()) > 0.9 * (hi - lo)  # the whole interval, not a point
    # The loss really uses them: DM times and fake-score times of step k fall in interval k.
    seen = {"dm": [], "fake": []}
    dmd, den = tdm_mod.dmd_direction, tdm_mod.fake_score_loss
    monkeypatch.setattr(tdm_mod, "dmd_direction", lambda *a, **kw: seen["dm"].append(a[6]) or dmd(*a, **kw))
    monkeypatch.setattr(
        tdm_mod, "fake_score_loss", lambda f, x, c, g, t=None: seen["fake"].append(t) or den(f, x, c, g, t)
    )
    obj.terms(module, batch(), torch.Generator().manual_seed(0))
    for k in range(steps):
        lo, hi = step_interval(sched, grid, k)
        for key in ("dm", "fake"):
            t = seen[key][k]
            assert float(t.min()) >= lo and float(t.max()) <= hi, (key, k)


def test_gradients_dm_to_student_critic_to_fake_score():
    module = module_for(TDM(), steps=2)
    with torch.no_grad():
        module.critic.net.means.add_(0.3)
    terms = module.objective.terms(module, batch(), torch.Generator().manual_seed(0))
    student, critic = list(module.student.parameters()), list(module.critic.parameters())

    def grads(t, params):
        return torch.autograd.grad(t.sum(), params, retain_graph=True, allow_unused=True)

    for d, c in zip(terms["dm"], terms["critic"]):
        assert all(g is not None for g in grads(d, student)) and all(g is None for g in grads(d, critic))
        assert all(g is None for g in grads(c, student)) and all(g is not None for g in grads(c, critic))
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_student_samples_with_k_ddim_steps_on_its_grid():
    module = module_for(TDM(), steps=2)
    student = module.student.eval()
    assert student.card.sampler.solver == "ddim" and student.card.sampler.grid[-1] == 0.0
    student.reset_counters()
    x = sample(student, torch.randn(8, 2), cond=torch.arange(8) % 4)
    assert x.shape == (8, 2) and torch.isfinite(x).all() and student.nfe == 2
    with pytest.raises(ValueError, match="dm_weight"):
        TDM(dm_weight=0.0)


def test_few_hundred_steps_move_a_two_step_student_to_the_teacher(tmp_path):
    tea = teacher()
    obj = TDM(critic_lr_scale=20.0)
    # Adam without momentum and a fast fake score: the normalised DM push has a fixed size, so a
    # lagging fake score makes the student overshoot on this toy.
    train = TrainConfig(
        iterations=300, batch_size=64, lr=1e-3, betas=(0.0, 0.999), warmup_iterations=10, ema_decay=0.95, progress=False
    )
    torch.manual_seed(0)
    res = distill(
        tea,
        obj,
        DistillConfig(student_steps=2, train=train),
        None,
        work_dir=tmp_path,
        progress=False,
        student_net=MLPNet(2, 64, 4),
    )
    torch.manual_seed(0)
    untrained = make_student(tea, replace(obj.student_spec(tea), net=MLPNet(2, 64, 4)), 2, obj.sampler(tea, 2))
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(1000, 2, generator=g), torch.arange(1000) % 4
    ref = sample(tea, noise, solver="dpmpp_2m", num_steps=30, cond=labels)
    trained, before = (sliced_wasserstein(sample(s.eval(), noise, cond=labels), ref) for s in (res.student, untrained))
    assert trained < 0.3 * before, (trained, before)


def test_smoke_checkpoint_round_trip(tmp_path):
    from fewstep.core.checkpoints import load_denoiser

    from ..tiny import tiny_unet_denoiser

    tea = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, progress=False))
    distill(tea, TDM(), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.provenance["distilled_by"] == "tdm" and student.card.sampler.solver == "ddim"
    x = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and student.nfe == 2
