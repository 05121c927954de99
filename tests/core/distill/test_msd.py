"""Multi-student distillation: the router sends each class to its owner exactly, students train on
their own classes only, smaller students are smaller, the router samples through solvers.sample and
round-trips through its checkpoint, and per-student DM on the 2-D toy puts each student on its modes."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import fewstep.core.distill.multi_student as msd_mod
from fewstep.core.card import ModelCard, SamplerRule
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, make_student
from fewstep.core.distill.base import DistillModule
from fewstep.core.distill.multi_student import (
    MSD,
    StudentRouter,
    check_partition,
    distill_multi_student,
    load_router,
    round_robin,
    save_router,
)
from fewstep.core.io import CheckpointError
from fewstep.core.schedules import VPDiscrete
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import LearnableMeansGMM, MEANS, MLPNet
from ..tiny import tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def param_count(m):
    return sum(p.numel() for p in m.parameters())


class ConstNet(nn.Module):
    """x0 = 10 * (student index) + label, everywhere: shows who answered for which class."""

    def __init__(self, j):
        super().__init__()
        self.j = j
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, net_t, cond=None):
        return torch.zeros_like(x) + self.w + 10.0 * self.j + cond.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def const_router(partition):
    sched = VPDiscrete()
    students = [
        Denoiser(
            ConstNet(j),
            sched,
            "x0",
            sample_shape=(2,),
            num_classes=4,
            card=ModelCard(student_steps=1, sampler=SamplerRule("consistency", [sched.t_max, 0.0])),
        )
        for j in range(len(partition))
    ]
    return StudentRouter(students, partition)


def gmm_teacher():
    sched = VPDiscrete()
    return Denoiser(LearnableMeansGMM(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,), num_classes=4).eval()


# -- partition and routing -------------------------------------------------------------------------
def test_partitions():
    assert round_robin(5, 2) == [[0, 2, 4], [1, 3]]
    assert check_partition([[3, 1], [0, 2]], 4) == [[1, 3], [0, 2]]
    for bad in ([[0, 1], [1, 2, 3]], [[0, 1], [2]], [[0, 1, 2, 3], []]):
        with pytest.raises(ValueError, match="partition"):
            check_partition(bad, 4)


def test_router_sends_each_class_to_its_student_exactly():
    router = const_router([[0, 2], [1], [3]])
    owner = {0: 0, 2: 0, 1: 1, 3: 2}
    cond = torch.tensor([3, 0, 1, 2, 2, 1, 0, 3])
    out = router(torch.randn(8, 2), torch.full((8,), 0.5, dtype=torch.float64), cond)
    want = torch.tensor([10.0 * owner[int(c)] + float(c) for c in cond])
    assert torch.equal(out, want[:, None].expand(8, 2))
    assert torch.equal(router.route(cond), torch.tensor([owner[int(c)] for c in cond]))
    with pytest.raises(ValueError, match="labels"):
        router(torch.randn(2, 2), 0.5, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer labels"):
        router(torch.randn(2, 2), 0.5, None)


def test_each_student_trains_on_its_own_classes_only(monkeypatch):
    tea = gmm_teacher()
    obj = MSD(classes=(1, 3))
    student = make_student(tea, replace(obj.student_spec(tea), net=MLPNet(2, 16, 4)), 1, obj.sampler(tea, 1))
    module = DistillModule(tea, student, obj, total_iterations=10)
    seen = []
    fake_loss = msd_mod.fake_score_loss
    monkeypatch.setattr(msd_mod, "fake_score_loss", lambda f, x, c, g: seen.append(c) or fake_loss(f, x, c, g))
    seen_dm = []
    dmd = msd_mod.dmd_direction
    monkeypatch.setattr(msd_mod, "dmd_direction", lambda r, f, x, c, *a: seen_dm.append(c) or dmd(r, f, x, c, *a))
    loss = module(None, torch.arange(16) % 4, None, None, torch.Generator().manual_seed(0), n=16)
    assert loss.shape == (16,)
    for c in (seen[0], seen_dm[0]):
        assert set(c.tolist()) == {1, 3}
    with pytest.raises(ValueError, match="classes"):
        MSD(classes=(1, 1))
    whole = DistillModule(tea, student, MSD(), total_iterations=10)  # classes=(): one student owns every class
    assert set(MSD().own(whole, 400, torch.Generator().manual_seed(0), "cpu").tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="width_mult"):
        MSD(classes=(0,), width_mult=1.5)


def test_a_smaller_student_has_fewer_parameters():
    tea = tiny_unet_denoiser()
    full = MSD(classes=(0,)).student_spec(tea).net
    half = MSD(classes=(0,), width_mult=0.5).student_spec(tea).net
    assert param_count(full) == param_count(tea.net)
    assert half.config.channels == tea.net.config.channels // 2 and param_count(half) < 0.4 * param_count(tea.net)


# -- sampling and checkpoints ------------------------------------------------------------------------
def unet_router(tmp_path=None):
    tea = tiny_unet_denoiser()
    students = []
    for j, part in enumerate([[0, 2], [1]]):
        obj = MSD(classes=tuple(part), width_mult=0.5)
        torch.manual_seed(j)
        s = make_student(tea, obj.student_spec(tea), 1, obj.sampler(tea, 1))
        with torch.no_grad():
            s.net.conv_out.weight.normal_(0, 0.1)  # a zero output conv would make every student answer 0
        students.append(s.eval())
    return StudentRouter(students, [[0, 2], [1]])


def test_router_samples_through_solvers_sample_and_round_trips(tmp_path):
    router = unet_router().eval()
    cond = torch.tensor([0, 1, 2, 1])
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    router.reset_counters()
    x = sample(router, noise, cond=cond, generator=torch.Generator().manual_seed(1))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and router.nfe == 1
    assert [s.nfe for s in router.students] == [1, 1]  # one call each, on their own samples
    save_router(router, tmp_path / "msd")
    assert {p.name for p in tmp_path.iterdir()} == {
        "msd.json",
        "msd.safetensors",
        "msd.student0.json",
        "msd.student0.safetensors",
        "msd.student1.json",
        "msd.student1.safetensors",
    }
    loaded = load_router(tmp_path / "msd")
    assert loaded.partition == [[0, 2], [1]] and torch.equal(loaded.owner, router.owner)
    y = sample(loaded, noise, cond=cond, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, x)
    # A student file replaced behind the router's back is refused.
    from fewstep.core.checkpoints import save_denoiser

    save_denoiser(router.students[1], tmp_path / "msd.student0")
    with pytest.raises(CheckpointError, match="student0"):
        load_router(tmp_path / "msd")


def test_distill_multi_student_smoke_on_a_unet(tmp_path):
    tea = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=1, train=TrainConfig(iterations=2, batch_size=4, progress=False))
    router, results = distill_multi_student(tea, cfg, tmp_path / "msd", num_students=2, width_mult=0.5, progress=False)
    assert len(results) == 2 and router.partition == [[0, 2], [1]]
    loaded = load_router(tmp_path / "msd")
    assert all(param_count(s.net) < param_count(tea.net) for s in loaded.students)
    assert loaded.students[0].card.provenance["msd"]["classes"] == [0, 2]
    x = sample(loaded, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="one-step"):
        distill_multi_student(tea, DistillConfig(student_steps=2), tmp_path / "x", progress=False)


# -- the 2-D toy ----------------------------------------------------------------------------------------
def test_per_student_dm_puts_each_student_on_its_own_modes(tmp_path):
    tea = gmm_teacher()
    # Adam without momentum and a fast fake score: the normalised DM push has a fixed size, so a
    # lagging fake score makes the student overshoot on this toy. No clipping: the DM push is
    # normalised per sample already (Eq. 8); a clip only rescales some steps.
    train = TrainConfig(
        iterations=250, batch_size=64, lr=1e-3, betas=(0.0, 0.999), warmup_iterations=10, ema_decay=0.95, progress=False,
        grad_clip=0.0,
    )
    torch.manual_seed(0)
    router, _ = distill_multi_student(
        tea,
        DistillConfig(student_steps=1, train=train),
        None,
        partition=[[0, 2], [1, 3]],
        work_dir=tmp_path,
        student_net=lambda j: MLPNet(2, 64, 4),
        progress=False,
        critic_lr_scale=20.0,
    )
    means = torch.tensor(MEANS)
    noise = torch.randn(800, 2, generator=torch.Generator().manual_seed(5))
    for j, part in enumerate(router.partition):
        for c in part:
            x = sample(router, noise, cond=torch.full((800,), c))
            on_mode = torch.cdist(x, means).argmin(1) == c  # nearest mode is the class's own
            assert float(on_mode.float().mean()) > 0.9 and float((x.mean(0) - means[c]).norm()) < 0.25, (
                j,
                c,
                x.mean(0),
            )
            # ... and the same noise through the other student lands elsewhere: it never learnt class c.
            y = sample(router.students[1 - j], noise, cond=torch.full((800,), c))
            assert float((torch.cdist(y, means).argmin(1) == c).float().mean()) < 0.5
