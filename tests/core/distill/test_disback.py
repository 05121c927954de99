"""DisBack: the recorded degradation path runs from the teacher to the initial student, the real score
walks it backwards, the path is part of the checkpointed state, and a short run on the 2-D toy moves
the one-step student to the teacher's distribution."""

import itertools
from dataclasses import replace

import pytest
import torch

from fewstep.core.distill import DistillConfig, distill, make_student
from fewstep.core.distill.base import Batch, DistillModule
from fewstep.core.distill.critic import fake_score_loss
from fewstep.core.distill.disback import DisBack, generate
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import learnable_gmm_teacher, MLPNet, sliced_wasserstein

pytestmark = pytest.mark.usefixtures("one_thread")


def teacher():
    return learnable_gmm_teacher(4)


def module_for(obj, total, seed=0):
    tea = teacher()
    torch.manual_seed(seed)
    student = make_student(tea, replace(obj.student_spec(tea), net=MLPNet(2, 32, 4)), 1, obj.sampler(tea, 1))
    return DistillModule(tea, student, obj, total_iterations=total)


def run_steps(module, n_steps, batch=64, lr=2e-2):
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    for i in range(n_steps):
        gen = torch.Generator().manual_seed(100 + i)
        loss = module(None, torch.arange(batch) % 4, None, None, gen, n=batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def denoising_loss_on(den, x, cond, seeds=8):
    return (
        sum(float(fake_score_loss(den, x, cond, torch.Generator().manual_seed(s)).mean()) for s in range(seeds)) / seeds
    )


def test_path_runs_from_the_teacher_to_the_initial_student():
    obj = DisBack(path_size=4, record_fraction=0.8)
    module = module_for(obj, total=50)
    assert obj.record_steps(module) == 40
    init = {k: v.clone() for k, v in module.student.state_dict().items()}
    run_steps(module, 40)  # the recording stage
    # Stage 1 left the initial student as it was (no gradient reached it).
    assert all(torch.equal(v, module.student.state_dict()[k]) for k, v in init.items())
    module(None, torch.arange(8) % 4, None, None, torch.Generator(), n=8)  # step 40 takes snapshot 4
    path = obj.path(module)
    assert len(path) == 5 and path[0] is module.teacher
    x = torch.randn(16, 2)
    t = torch.full((16,), 0.5, dtype=torch.float64)
    for k in range(1, 5):  # snapshots differ from each other: the path moves
        assert not torch.equal(path[k].net.means, path[k - 1].net.means)
    # Denoising loss on the initial student's samples falls along the path.
    batch = Batch(x0=None, cond=torch.arange(512) % 4, n=512)
    module.student.load_state_dict(init)
    x_init = generate(module, batch, torch.Generator().manual_seed(7), with_grad=False)
    losses = [denoising_loss_on(p, x_init, batch.cond) for p in path]
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < losses[len(losses) // 2] < losses[0], losses
    with torch.no_grad():  # the teacher itself is s'_0
        torch.testing.assert_close(path[0](x, t, batch.cond[:16]), module.teacher(x, t, batch.cond[:16]))


def test_real_score_walks_the_path_backwards(monkeypatch):
    obj = DisBack(path_size=4, record_fraction=0.2, backtrack_fraction=0.6)
    module = module_for(obj, total=100)
    rec = obj.record_steps(module)
    idx = [obj.real_index(module, s) for s in range(rec, 100)]
    assert idx[0] == 3 and idx[-1] == 0
    assert all(b <= a for a, b in itertools.pairwise(idx))  # never forwards
    assert sorted(set(idx)) == [0, 1, 2, 3]
    assert idx.count(0) >= 0.4 * len(idx) - 1  # the teacher holds the rest of stage 2
    # The loss uses exactly that path member as the real score.
    import fewstep.core.distill.disback as db

    seen = []
    real_fn = db.dmd_direction

    def spy(real, fake, *a, **k):
        seen.append(real)
        return real_fn(real, fake, *a, **k)

    monkeypatch.setattr(db, "dmd_direction", spy)
    gen = torch.Generator().manual_seed(0)
    for s in (rec - 1, rec, rec + 25, 99):
        module.iteration.fill_(s)
        module(None, torch.arange(8) % 4, None, None, gen, n=8)
    path = obj.path(module)
    assert [id(r) for r in seen] == [id(path[obj.real_index(module, s)]) for s in (rec, rec + 25, 99)]
    assert seen[-1] is module.teacher


def test_path_is_checkpointed_state_and_frozen():
    obj = DisBack(path_size=2)
    module = module_for(obj, total=20)
    sd = module.state_dict()
    assert any(k.startswith("path.0.") for k in sd) and any(k.startswith("path.1.") for k in sd)
    assert not any(p.requires_grad for p in module.path.parameters())
    with torch.no_grad():
        module.path[1].net.means.add_(1.0)
    fresh = module_for(obj, total=20)
    fresh.load_state_dict(module.state_dict())  # what a resume does
    assert torch.equal(fresh.path[1].net.means, module.path[1].net.means)


def test_options_are_validated():
    with pytest.raises(ValueError, match="path_size"):
        DisBack(path_size=0)
    with pytest.raises(ValueError, match="record_fraction"):
        DisBack(record_fraction=1.0)


def test_short_run_moves_one_step_student_toward_teacher(tmp_path):
    tea = teacher()
    # A fast fake score and Adam without momentum (beta1 = 0, as GAN-style games use): on this toy the
    # normalised DM push has a fixed size, so a lagging fake score makes the student overshoot.
    obj = DisBack(path_size=3, record_fraction=0.2, critic_lr_scale=20.0)
    train = TrainConfig(
        iterations=300, batch_size=64, lr=1e-3, betas=(0.0, 0.999), warmup_iterations=10, ema_decay=0.95, progress=False
    )
    cfg = DistillConfig(student_steps=1, train=train)
    torch.manual_seed(0)
    res = distill(tea, obj, cfg, None, work_dir=tmp_path, progress=False, student_net=MLPNet(2, 64, 4))
    torch.manual_seed(0)
    untrained = make_student(tea, replace(obj.student_spec(tea), net=MLPNet(2, 64, 4)), 1, obj.sampler(tea, 1))
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(1000, 2, generator=g), torch.arange(1000) % 4
    ref = sample(tea, noise, solver="dpmpp_2m", num_steps=30, cond=labels)
    trained, before = (sliced_wasserstein(sample(s.eval(), noise, cond=labels), ref) for s in (res.student, untrained))
    assert trained < 0.3 * before, (trained, before)


def test_too_few_steps_for_the_path_is_refused():
    with pytest.raises(ValueError, match="backtracking"):
        module_for(DisBack(path_size=4, record_fraction=0.9), total=4)


def test_smoke_checkpoint_round_trip(tmp_path):
    from fewstep.core.checkpoints import load_denoiser

    from ..tiny import tiny_unet_denoiser

    tea = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=1, train=TrainConfig(iterations=3, batch_size=4, progress=False))
    distill(tea, DisBack(path_size=1, record_fraction=0.3), cfg, tmp_path / "s", progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.provenance["distilled_by"] == "disback" and student.card.sampler.solver == "consistency"
    x = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and student.nfe == 1
