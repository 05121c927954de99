"""BOOT (Gu et al. 2023): data-free bootstrapped distillation into g(eps, t), and its sampler."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from fewstep.core.checkpoints import load_denoiser
from fewstep.core.card import ModelCard, SamplerRule
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, DistillModule, distill, make_student
from fewstep.core.distill.boot import BOOT
from fewstep.core.updates import alpha_sigma
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import MLPNet, gmm_teacher, mode_coverage, sliced_wasserstein
from ..tiny import tiny_unet_denoiser


def _module(teacher, objective, total=10, net=None):
    spec = objective.student_spec(teacher)
    if net is not None:
        spec = replace(spec, net=net)
    student = make_student(teacher, spec, 1, objective.sampler(teacher, 1))
    return DistillModule(teacher, student, objective, total)


class ExactBootNet(nn.Module):
    """The map BOOT's loss is zero at: from x_T, y_T = f(x_T, T), then one teacher DDIM step in y
    per grid interval, evaluated at the student's own x_t = alpha_t y_t + sigma_t eps (prediction x0)."""

    def __init__(self, teacher: Denoiser, objective: BOOT):
        super().__init__()
        self.__dict__["teacher"] = teacher
        self.grid, self.label = objective.times(teacher.schedule, "cpu")

    @torch.no_grad()
    def trajectory(self, x_T, cond):  # (N+1, B, D): y at every student time
        sched, b = self.teacher.schedule, x_T.shape[0]
        eps = x_T / sched.sigma(self.grid[0]).float()
        ys = [self.teacher(x_T, self.grid[:1].expand(b), cond)]
        for t, s in zip(self.grid[:-1], self.grid[1:]):
            t, s = t.expand(b), s.expand(b)
            (a_t, s_t), (a_s, s_s) = alpha_sigma(sched, t), alpha_sigma(sched, s)
            y = ys[-1]
            x_t = a_t.float()[:, None] * y + s_t.float()[:, None] * eps
            delta = (1.0 - (s_s * a_t) / (a_s * s_t)).float()[:, None]
            ys.append(y + delta * (self.teacher(x_t, t, cond) - y))
        return torch.stack(ys)

    def forward(self, x, net_t, cond=None):
        t = self.teacher.schedule.timestep_to_t(net_t.double())
        k = (t[:, None] - self.label[None]).abs().argmin(1)  # (B,) grid index of each requested time
        return self.trajectory(x, cond)[k, torch.arange(x.shape[0])]


def test_boot_loss_vanishes_on_its_fixed_point_the_teacher_ddim_trajectory():
    teacher = gmm_teacher()
    obj = BOOT(grid_steps=6)
    exact = ExactBootNet(teacher, obj)
    module = _module(teacher, obj, net=exact)
    cond = torch.arange(64) % 4
    loss = module(None, cond, None, None, torch.Generator().manual_seed(0))
    assert loss.shape == (64,) and float(loss.max()) < 1e-8
    # The fixed point is the teacher's own 6-step DDIM sample (up to the alpha_T y_T start).
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ddim = sample(teacher, noise, "ddim", grid=obj.times(teacher.schedule, "cpu")[0], cond=cond)
    torch.testing.assert_close(sample(module.student.eval(), noise, cond=cond), ddim, atol=2e-2, rtol=0)
    # A student off the fixed point has a positive loss.
    off = _module(teacher, obj, net=MLPNet(2, 16, 4))(None, cond, None, None, torch.Generator().manual_seed(0))
    assert float(off.detach().mean()) > 1e-3


def test_boot_gradients_reach_only_the_student():
    teacher = tiny_unet_denoiser()
    module = _module(teacher, BOOT(grid_steps=4)).train()
    loss = module(None, torch.arange(4) % 3, None, None, torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    assert module.target is None  # no EMA target: BOOT bootstraps from the live student under stop-gradient


def test_sample_boot_is_one_evaluation_at_t_min():
    sched = VPDiscrete()
    torch.manual_seed(0)
    student = Denoiser(MLPNet(2, 16, 4), sched, "x0", sample_shape=(2,), num_classes=4,
                       card=ModelCard(student_steps=1, sampler=BOOT().sampler(gmm_teacher(), 1))).eval()
    noise, cond = torch.randn(8, 2), torch.arange(8) % 4
    student.reset_counters()
    out = sample(student, noise, cond=cond)
    assert student.nfe == 1
    x_T = noise * sched.sigma(torch.tensor(1.0, dtype=torch.float64)).float()
    torch.testing.assert_close(out, student(x_T, sched.t_min, cond))
    # Ending at t > 0: the trajectory state alpha_t y_t + sigma_t eps there, still one NFE.
    grid = torch.tensor([1.0, 0.4], dtype=torch.float64)
    student.reset_counters()
    mid = sample(student, noise, solver="boot", grid=grid, cond=cond)
    assert student.nfe == 1
    a, s = sched.alpha(grid[1]).float(), sched.sigma(grid[1]).float()
    torch.testing.assert_close(mid, a * student(x_T, 0.4, cond) + s * noise)


def test_boot_toy_data_free_one_step_student_approaches_teacher(tmp_path):
    teacher = gmm_teacher()
    g = torch.Generator().manual_seed(1)
    noise, cond = torch.randn(1000, 2, generator=g), torch.arange(1000) % 4
    ref = sample(teacher, noise, "ddim", num_steps=64, cond=cond, denoise_to_zero=True)
    obj = BOOT(grid_steps=8)
    torch.manual_seed(0)
    net = MLPNet(2, 64, 4)
    untrained = _module(teacher, obj, net=copy.deepcopy(net)).student
    cfg = DistillConfig(student_steps=1, train=TrainConfig(iterations=250, batch_size=64, lr=1e-3, warmup_iterations=10, ema_decay=0.99, progress=False))
    res = distill(teacher, obj, cfg, None, data=None, work_dir=tmp_path, student_net=net, progress=False)
    s = sample(res.student, noise, cond=cond)
    sw, sw0 = sliced_wasserstein(s, ref), sliced_wasserstein(sample(untrained.eval(), noise, cond=cond), ref)
    assert sw < 0.3 * sw0, (sw, sw0)
    assert mode_coverage(s) == 1.0


@pytest.mark.parametrize("steps", [1, 4])
def test_boot_smoke_distill_saves_and_reloads(tmp_path, steps):
    teacher = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=steps, train=TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, progress=False))
    res = distill(teacher, BOOT(grid_steps=4), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.sampler == SamplerRule("boot", [1.0, 0.0]) and student.prediction == "x0"
    noise, cond = torch.randn(3, 1, 8, 8), torch.arange(3)
    student.reset_counters()
    out = sample(student, noise, cond=cond)
    assert student.nfe == 1 and out.shape == noise.shape and float(out.abs().max()) <= 1.0
    torch.testing.assert_close(out, sample(res.student, noise, cond=cond))
