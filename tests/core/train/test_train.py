import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewstep.core.io import load_weights
from fewstep.core.losses import DenoisingLoss
from fewstep.core.train import CKPT_NAME, TrainConfig, train

from ..tiny import tiny_data, tiny_denoiser


def _run(tmp, steps, ckpt_every=5, den=None, lr=5e-3, data=None):
    den = den or tiny_denoiser()
    x, y = data or tiny_data()
    loss = DenoisingLoss()
    cfg = TrainConfig(iterations=steps, batch_size=16, lr=lr, warmup_iterations=2, ckpt_every=ckpt_every, progress=False)
    res = train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, tmp)
    return den, res


def test_training_lowers_the_loss(tmp_path):
    _, res = _run(tmp_path, 120, ckpt_every=1000, lr=1e-2)
    assert sum(res.losses[-20:]) / 20 < 0.7 * sum(res.losses[:20]) / 20


def test_resume_is_exact(tmp_path):
    full, res_full = _run(tmp_path / "full", 10)
    part, _ = _run(tmp_path / "part", 5)  # "interrupted" after its step-5 checkpoint
    resumed, res = _run(tmp_path / "part", 10)  # a fresh process would do exactly this
    assert res.resumed_from == 5
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    for k in res_full.ema:
        assert torch.equal(res_full.ema[k], res.ema[k]), k
    assert res.losses == res_full.losses


def test_checkpoints_are_atomic_safetensors(tmp_path):
    _run(tmp_path, 6, ckpt_every=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{CKPT_NAME}.json", f"{CKPT_NAME}.safetensors"], names  # no temp files left
    tensors, card = load_weights(tmp_path / CKPT_NAME)
    assert card["step"] == 6 and any(k.startswith("ema.") for k in tensors)


def test_nan_guard_stops_with_a_clear_message(tmp_path):
    x, y = tiny_data()
    x[3] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged.*check the data"):
        _run(tmp_path, 50, data=(x, y))


def test_ddp_world_size_2_ranks_agree(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, c0 = load_weights(tmp_path / "rank0")
    w1, c1 = load_weights(tmp_path / "rank1")
    assert c0["world"] == 2 and c1["world"] == 2
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # Training actually moved the weights away from the shared initialisation.
    init = tiny_denoiser(seed=0).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    """Mixed precision path (bf16 autocast; the default on CUDA) runs and learns on the CPU too."""
    den = tiny_denoiser()
    x, y = tiny_data()
    loss = DenoisingLoss()
    cfg = TrainConfig(iterations=80, batch_size=16, lr=1e-2, warmup_iterations=2, ckpt_every=1000, amp="bf16", progress=False)
    res = train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, tmp_path)
    assert all(v.dtype == torch.float32 for v in den.state_dict().values())  # master weights stay fp32
    assert sum(res.losses[-20:]) / 20 < 0.8 * sum(res.losses[:20]) / 20


def test_lr_scales_give_a_submodule_its_own_learning_rate(tmp_path):
    """A module's lr_scales() puts the named part in its own AdamW group at a multiple of the lr
    (a two time-scale critic); the rest keeps the base rate, and resume restores the groups."""

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gen, self.critic = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

        def lr_scales(self):
            return {"critic": 10.0}

    m = Two()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def loss(model, batch, gen):
        (x,) = batch
        return model.gen(x).squeeze(1).pow(2) + model.critic(x).squeeze(1).pow(2)

    cfg = TrainConfig(iterations=1, batch_size=4, lr=1e-3, warmup_iterations=1, progress=False, grad_clip=0.0, weight_decay=0.0)
    train(m, loss, [torch.randn(16, 2)], cfg, tmp_path)
    # Adam's first step moves every parameter by ~lr * sign(grad): 1e-3 for gen, 1e-2 for the critic.
    moved = {k: (m.state_dict()[k] - before[k]).abs().max().item() for k in before}
    assert abs(moved["gen.bias"] - 1e-3) < 2e-4 and abs(moved["critic.bias"] - 1e-2) < 2e-3, moved
    train(m, loss, [torch.randn(16, 2)], TrainConfig(**{**cfg.__dict__, "iterations": 2}), tmp_path)  # resumes with the two groups
