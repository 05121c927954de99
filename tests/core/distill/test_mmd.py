"""MMD-DDM: the kernel MMD is zero for identical feature sets and grows with a shift, the loss is one
batch value spread over the samples, gradients run through every (checkpointed) sampling step, the
feature map is the caller's, and fine-tuning a 2-step sampler on the 2-D toy lowers its MMD."""

import itertools
import json

import pytest
import torch

from fewstep.core.distill import DistillConfig, distill
from fewstep.core.distill.base import DistillModule, make_student
from fewstep.core.distill.mmd import MMDDDM, RandomProjection, gaussian_mmd2
from fewstep.core.solvers import sample
from fewstep.core.train import TrainConfig

from .toys import learnable_gmm_teacher, gmm_data

pytestmark = pytest.mark.usefixtures("one_thread")


def teacher():
    return learnable_gmm_teacher(0)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    assert abs(float(gaussian_mmd2(x, x.clone()))) < 1e-6
    y = torch.randn(256, 8, generator=g)  # same law, other draws: small
    shifts = [float(gaussian_mmd2(x, y + s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifts[0] < 0.02 and all(b > a for a, b in itertools.pairwise(shifts)) and shifts[-1] > 0.2, shifts
    assert float(gaussian_mmd2(x, y + 1.0, bandwidths=(1.0,))) >= 0.0


def test_random_projection_is_a_fixed_map():
    phi = RandomProjection(dim=16)
    small = torch.randn(4, 2)
    assert torch.equal(phi(small), small)  # few entries: the sample itself
    big = torch.randn(4, 1, 8, 8)
    f = phi(big)
    assert f.shape == (4, 16) and torch.equal(f, RandomProjection(dim=16)(big))  # seeded, same every time
    d_in, d_out = torch.cdist(big.flatten(1), big.flatten(1)), torch.cdist(f, f)
    off = ~torch.eye(4, dtype=torch.bool)
    ratio = d_out[off] / d_in[off]
    assert float(ratio.min()) > 0.3 and float(ratio.max()) < 2.0  # distances roughly kept (JL)


def _module(obj, steps=2):
    tea = teacher()
    student = make_student(tea, obj.student_spec(tea), steps, obj.sampler(tea, steps))
    return DistillModule(tea, student, obj, total_iterations=10)


def test_loss_is_the_batch_mmd_on_every_sample_with_gradients_through_all_steps(monkeypatch):
    x0, _ = gmm_data(64)
    grads = []
    for ckpt in (True, False):
        module = _module(MMDDDM(checkpoint_steps=ckpt))
        loss = module(x0, None, None, None, torch.Generator().manual_seed(0))
        assert loss.shape == (64,) and torch.all(loss == loss[0]) and float(loss[0]) > 0
        loss.mean().backward()
        grads.append(module.student.net.means.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])  # checkpointing recomputes, it does not change the maths
    # The first step is differentiated too: cutting the chain after it changes the gradient.
    import fewstep.core.distill.mmd as mmd_mod

    jump, calls = mmd_mod.ddim_jump, []

    def cut_first(*a):
        calls.append(1)
        out = jump(*a)
        return out.detach() if len(calls) == 1 else out

    monkeypatch.setattr(mmd_mod, "ddim_jump", cut_first)
    module = _module(MMDDDM(checkpoint_steps=False))
    module(x0, None, None, None, torch.Generator().manual_seed(0)).mean().backward()
    assert len(calls) == 2 and not torch.allclose(module.student.net.means.grad, grads[1])


def test_the_callers_feature_map_is_used_and_not_trained():
    calls = []

    def features(x):
        calls.append(x.shape)
        return x.flatten(1) * 2.0

    obj = MMDDDM(features=features)
    card = obj.describe()
    json.dumps(card)  # serialisable: the callable is named, not stored
    assert card["features"].endswith("features")
    module = _module(obj)
    assert module.attachments["features"] is features and "features" not in dict(module.named_children())
    assert not any("features" in k for k in module.state_dict())
    module(gmm_data(16)[0], None, None, None, torch.Generator().manual_seed(0))
    assert len(calls) == 2  # real and generated batches
    module2 = _module(MMDDDM())
    assert isinstance(module2.attachments["features"], RandomProjection)
    with pytest.raises(ValueError, match="bandwidths"):
        MMDDDM(bandwidths=())


def test_fine_tuning_a_two_step_sampler_lowers_its_mmd(tmp_path):
    tea = teacher()
    x, _ = gmm_data(2048)
    obj = MMDDDM()
    g = torch.Generator().manual_seed(5)
    ref = sample(tea, torch.randn(1000, 2, generator=g), solver="dpmpp_2m", num_steps=30)
    noise = torch.randn(1000, 2, generator=g)
    before = sample(tea, noise, solver="ddim", grid=torch.tensor(obj.sampler(tea, 2).grid, dtype=torch.float64))
    train = TrainConfig(iterations=120, batch_size=128, lr=3e-2, warmup_iterations=10, ema_decay=0.9, progress=False)
    res = distill(
        tea, obj, DistillConfig(student_steps=2, train=train), None, data=(x, None), work_dir=tmp_path, progress=False
    )
    res.student.reset_counters()
    after = sample(res.student, noise)  # its own rule: 2 DDIM steps on the same grid
    assert res.student.nfe == 2
    mmd_before, mmd_after = float(gaussian_mmd2(before, ref)), float(gaussian_mmd2(after, ref))
    assert mmd_after < 0.2 * mmd_before, (mmd_after, mmd_before)


def test_smoke_checkpoint_round_trip(tmp_path):
    from fewstep.core.checkpoints import load_denoiser

    from ..tiny import tiny_data, tiny_unet_denoiser

    tea = tiny_unet_denoiser()
    x, y = tiny_data(16)
    x = torch.nn.functional.interpolate(x, size=(8, 8))
    cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=2, batch_size=4, progress=False))
    distill(tea, MMDDDM(feature_dim=16), cfg, tmp_path / "s", data=(x, y), progress=False)
    student = load_denoiser(tmp_path / "s")
    assert student.card.provenance["objective"]["features"] == "random-projection"
    out = sample(student, torch.randn(3, 1, 8, 8), cond=torch.tensor([0, 1, 2]))
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all() and student.nfe == 2
