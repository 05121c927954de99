"""The objective contract, over every entry of ``OBJECTIVES``: a per-sample finite loss, the same loss
under the same seed, no gradient into the teacher, a JSON round trip of its description, a
checkpoint round trip of its module, and an interrupted run that resumes to the very same losses."""

import json
import shutil

import pytest
import torch

from fewstep.core.distill import OBJECTIVES, DistillConfig, DistillModule, TrajectoryConfig, distill, make_objective, student_for
from fewstep.core.distill.registry import objective_from_description
from fewstep.core.distill.runner import _training_data
from fewstep.core.io import load_weights, save_weights
from fewstep.core.train import TrainConfig

from ..tiny import tiny_unet_denoiser

NAMES = sorted(OBJECTIVES)
STUDENT_STEPS = {"pd": 2, "guided-pd": 2, "mlcm": 2, "hyper-sd": 2, "tdm": 2, "mmd-ddm": 2, "arcflow": 2}
OPTIONS = {"disback": {"path_size": 1, "record_fraction": 0.25}}  # both of its stages fit in 4 iterations


def _objective(name):
    return make_objective(name, **OPTIONS.get(name, {}))


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (n,), generator=g)


def _cfg(iterations, save_every=1000):
    train = TrainConfig(iterations=iterations, batch_size=4, lr=1e-3, warmup_iterations=1, save_every=save_every, progress=False)
    return DistillConfig(student_steps=1, train=train, trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8))


def _module(name, tmp_path, seed=0):
    """A fresh DistillModule and one batch of the data its objective asks for, as the runner builds them."""
    torch.manual_seed(seed)
    teacher = tiny_unet_denoiser(seed=0)
    obj = _objective(name)
    k = STUDENT_STEPS.get(name, 1)
    student = student_for(teacher, obj, k)  # as the runner builds it (v, converted, for this eps teacher)
    module = DistillModule(teacher, student, obj, total_iterations=10)
    data = _training_data(module, obj, _cfg(1), _data(), tmp_path / "work", progress=False)
    idx = torch.arange(4)
    batch = [None if d is None else d[idx] for d in data]
    if obj.data == "none":
        batch[0] = None
    return module, batch


def _loss(module, batch, seed=1):
    return module(*batch, torch.Generator().manual_seed(seed), n=4)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_per_sample_finite_and_deterministic(name, tmp_path, one_thread):
    module, batch = _module(name, tmp_path)
    loss = _loss(module.train(), batch)
    assert loss.shape == (4,) and torch.isfinite(loss).all(), (name, loss)
    again, batch2 = _module(name, tmp_path)
    assert torch.equal(_loss(again.train(), batch2), loss), name


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_reaches_the_teacher(name, tmp_path, one_thread):
    module, batch = _module(name, tmp_path)
    teacher = module.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _loss(module.train(), batch).mean().backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters()), name
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), name
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())  # not a submodule
    # Something trains (DisBack's first stage trains only its degradation path, not the student).
    assert any(p.grad is not None for p in module.parameters() if p.requires_grad), f"{name}: no gradient at all"


@pytest.mark.parametrize("name", NAMES)
def test_description_round_trips_through_json(name):
    obj = make_objective(name)
    text = json.dumps(obj.describe())
    back = objective_from_description(json.loads(text))
    assert back == obj and type(back) is type(obj)


@pytest.mark.parametrize("name", NAMES)
def test_module_checkpoint_round_trip(name, tmp_path, one_thread):
    module, batch = _module(name, tmp_path)
    _loss(module.train(), batch).mean().backward()  # move nothing, but touch every lazily built part
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    module.iteration.fill_(3)
    save_weights(tmp_path / "m", module.state_dict(), {"method": name})
    fresh, _ = _module(name, tmp_path, seed=1)
    tensors, _ = load_weights(tmp_path / "m")
    fresh.load_state_dict(tensors)
    assert torch.equal(_loss(fresh.train(), batch, seed=5), _loss(module.train(), batch, seed=5)), name


@pytest.mark.parametrize("name", NAMES)
def test_interrupted_run_resumes_to_the_same_losses(name, tmp_path, monkeypatch, one_thread):
    full = distill(tiny_unet_denoiser(), _objective(name), _cfg(4, save_every=2), None, data=_data(), work_dir=tmp_path / "full", progress=False)
    # The second run dies inside iteration 3 (after its iteration-2 checkpoint), as a second Ctrl-C
    # would: nothing half-updated is saved, the run resumes from iteration 2.
    cls = type(_objective(name))
    real_loss = cls.loss

    def stop_at_three(self, module, batch, generator):
        if module.training and int(module.iteration) == 3:
            raise KeyboardInterrupt
        return real_loss(self, module, batch, generator)

    monkeypatch.setattr(cls, "loss", stop_at_three)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_unet_denoiser(), _objective(name), _cfg(4, save_every=2), None, data=_data(), work_dir=tmp_path / "part", progress=False)
    monkeypatch.setattr(cls, "loss", real_loss)
    resumed = distill(tiny_unet_denoiser(), _objective(name), _cfg(4, save_every=2), None, data=_data(), work_dir=tmp_path / "part", progress=False)
    assert resumed.resumed_from == 2 and resumed.losses == full.losses, (name, resumed.losses, full.losses)
    shutil.rmtree(tmp_path)
