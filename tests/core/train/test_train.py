import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from fewstep.core.io import load_weights
from fewstep.core.losses import DenoisingLoss
from fewstep.core.parts import Part, part_parameters, updates_now
from fewstep.core.sharding import blocks, set_checkpointing, shard_groups
from fewstep.core.train import CKPT_NAME, TrainConfig, train

from ..tiny import tiny_data, tiny_denoiser, tiny_unet_denoiser
from .pair import make_pair, pair_data, pair_loss


def _run(tmp, steps, save_every=5, den=None, lr=5e-3, data=None):
    den = den or tiny_denoiser()
    x, y = data or tiny_data()
    loss = DenoisingLoss()
    cfg = TrainConfig(iterations=steps, batch_size=16, lr=lr, warmup_iterations=2, save_every=save_every, progress=False)
    res = train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, tmp)
    return den, res


def test_training_lowers_the_loss(tmp_path):
    _, res = _run(tmp_path, 120, save_every=1000, lr=1e-2)
    assert sum(res.losses[-20:]) / 20 < 0.7 * sum(res.losses[:20]) / 20


def test_resume_is_exact(tmp_path):
    full, res_full = _run(tmp_path / "full", 10)
    _run(tmp_path / "part", 5)  # "interrupted" after its iteration-5 checkpoint
    resumed, res = _run(tmp_path / "part", 10)  # a fresh process would do exactly this
    assert res.resumed_from == 5
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    for k in res_full.ema:
        assert torch.equal(res_full.ema[k], res.ema[k]), k
    assert res.losses == res_full.losses


def test_checkpoints_are_atomic_safetensors(tmp_path):
    _run(tmp_path, 6, save_every=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{CKPT_NAME}.json", f"{CKPT_NAME}.safetensors"], names  # no temp files left
    tensors, card = load_weights(tmp_path / CKPT_NAME)
    assert card["iteration"] == 6 and any(k.startswith("ema.") for k in tensors)
    assert [p["name"] for p in card["parts"]] == [""] and any(k.startswith("opt.0.net.") for k in tensors)


def test_nan_guard_stops_with_a_clear_message(tmp_path):
    x, y = tiny_data()
    x[3] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged.*check the data"):
        _run(tmp_path, 50, data=(x, y))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    """Mixed precision path (bf16 autocast; the default on CUDA) runs and learns on the CPU too."""
    den = tiny_denoiser()
    x, y = tiny_data()
    loss = DenoisingLoss()
    cfg = TrainConfig(iterations=80, batch_size=16, lr=1e-2, warmup_iterations=2, save_every=1000, amp="bf16", progress=False)
    res = train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, tmp_path)
    assert all(v.dtype == torch.float32 for v in den.state_dict().values())  # master weights stay fp32
    assert sum(res.losses[-20:]) / 20 < 0.8 * sum(res.losses[:20]) / 20




# -- parts: one optimiser, one clip and one update rate each -----------------------------------------
class TwoLinear(torch.nn.Module):
    """A student and a critic whose loss is a fixed function of their weights (the data are one
    repeated row), so a hand-built pair of optimisers can follow the train loop exactly."""

    def __init__(self, parts, critic_scale=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.student, self.critic = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        self._parts, self.critic_scale = parts, critic_scale

    def parts(self):
        return self._parts


def _two_loss(model, batch, gen):
    (x,) = batch
    return (model.student(x) - 1).pow(2).sum(1) + model.critic_scale * (model.critic(x) + 2).pow(2).sum(1)


ONES = [torch.ones(16, 3)]


def test_each_part_gets_its_own_learning_rate_betas_and_weight_decay(tmp_path):
    parts = (Part("student"), Part("critic", lr_scale=3.0, betas=(0.0, 0.99), weight_decay=0.1))
    m = TwoLinear(parts)
    ref = copy.deepcopy(m)
    cfg = TrainConfig(iterations=4, batch_size=4, lr=1e-2, warmup_iterations=1, grad_clip=0.0, progress=False)
    train(m, _two_loss, ONES, cfg, tmp_path)
    # The same four iterations by hand: one AdamW per part, with that part's settings.
    opt_s = torch.optim.AdamW(ref.student.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    opt_c = torch.optim.AdamW(ref.critic.parameters(), lr=1e-2 * 3.0, betas=(0.0, 0.99), weight_decay=0.1)
    for _ in range(4):
        opt_s.zero_grad(), opt_c.zero_grad()
        _two_loss(ref, [torch.ones(4, 3)], None).mean().backward()
        opt_s.step(), opt_c.step()
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    _, card = load_weights(tmp_path / CKPT_NAME)
    (s,), (c,) = card["param_groups"]
    assert (s["betas"], s["weight_decay"], s["params"]) == ([0.9, 0.999], 0.0, ["student.weight", "student.bias"])
    assert (c["betas"], c["weight_decay"], c["params"]) == ([0.0, 0.99], 0.1, ["critic.weight", "critic.bias"])


def test_a_huge_critic_gradient_does_not_shrink_the_students_update(tmp_path):
    """Each part's gradient norm is clipped on its own: the student moves exactly as it does beside a
    calm critic. One clip over both (the loop before parts) scales the student's gradient by ~1e-8,
    which Adam's eps turns into a smaller step: the hand-built joint clip below shows the difference."""
    parts = (Part("student"), Part("critic"))
    calm, wild = TwoLinear(parts), TwoLinear(parts, critic_scale=1e8)
    joint = copy.deepcopy(wild)
    cfg = TrainConfig(iterations=5, batch_size=4, lr=1e-2, warmup_iterations=1, grad_clip=1.0, progress=False)
    train(calm, _two_loss, ONES, cfg, tmp_path / "calm")
    train(wild, _two_loss, ONES, cfg, tmp_path / "wild")
    for k, v in calm.student.state_dict().items():
        assert torch.equal(wild.student.state_dict()[k], v), k
    opt = torch.optim.AdamW(joint.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        _two_loss(joint, [torch.ones(4, 3)], None).mean().backward()
        torch.nn.utils.clip_grad_norm_(list(joint.parameters()), 1.0)
        opt.step()
    gap = (joint.student.weight - calm.student.weight).abs().max()
    assert gap > 1e-3, gap


def test_an_update_ratio_of_5_steps_the_student_every_5th_iteration(tmp_path):
    m = TwoLinear((Part("student"), Part("critic", updates_per_student_update=5)))
    calls, steps = [0], []

    def counting_loss(model, batch, gen):
        calls[0] += 1
        return _two_loss(model, batch, gen)

    def hook(opt, args, kwargs):  # every optimiser step, by which part, at which iteration
        who = "student" if opt.param_groups[0]["params"][0] is m.student.weight else "critic"
        steps.append((calls[0] - 1, who))

    handle = register_optimizer_step_post_hook(hook)
    try:
        res = train(m, counting_loss, ONES, TrainConfig(iterations=12, batch_size=4, warmup_iterations=1, progress=False), tmp_path)
    finally:
        handle.remove()
    assert [i for i, who in steps if who == "student"] == [0, 5, 10]
    assert [i for i, who in steps if who == "critic"] == list(range(12))
    assert res.updates == {"student": 3, "critic": 12}
    assert [updates_now(m.parts(), "student", i) for i in range(6)] == [True, False, False, False, False, True]


def test_resume_with_several_parts_is_exact(tmp_path):
    """A tiny UNet student and a critic with its own lr, betas, weight decay, clip and a 3:1 ratio,
    interrupted mid-cycle (iteration 4): every part's optimiser state, the EMA and the global RNG
    (the UNet's CFG label dropout draws from it) come back, so the run ends bit-identical."""

    def run(work, n):
        m = make_pair(ratio=3)
        cfg = TrainConfig(iterations=n, batch_size=8, lr=1e-2, warmup_iterations=2, save_every=4, progress=False)
        return m, train(m, pair_loss, list(pair_data()), cfg, work)

    full, res_full = run(tmp_path / "full", 10)
    run(tmp_path / "part", 4)
    resumed, res = run(tmp_path / "part", 10)
    assert res.resumed_from == 4 and res.updates == res_full.updates == {"student": 4, "critic": 10}
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    for k, v in res_full.ema.items():
        assert torch.equal(res.ema[k], v), k
    assert res.losses == res_full.losses


def test_parts_are_validated():
    with pytest.raises(ValueError, match="ratio must be 1"):
        Part("student", updates_per_student_update=2)
    for bad in ({"lr_scale": 0.0}, {"betas": (0.9,)}, {"betas": (1.0, 0.9)}, {"grad_clip": -1.0}, {"updates_per_student_update": 0}):
        with pytest.raises(ValueError):
            Part("critic", **bad)
    with pytest.raises(ValueError, match="names no submodule"):
        part_parameters(TwoLinear(()), (Part("student"), Part("critc")))
    with pytest.raises(ValueError, match="under no part"):
        part_parameters(TwoLinear(()), (Part("student"),))
    with pytest.raises(ValueError, match="several parts"):
        nested = torch.nn.ModuleDict({"critic": torch.nn.Sequential(torch.nn.Linear(2, 2))})
        part_parameters(nested, (Part("critic"), Part("critic.0")))
    assert Part("critic", betas=[0.0, 0.99]).betas == (0.0, 0.99)  # a JSON list comes back a tuple
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(iterations=1, strategy="zero3")


# -- FSDP2 in one process: the sharding plan and activation checkpointing ------------------------------
def test_sharding_plan_covers_every_parameter_once_and_blocks_are_the_nets_blocks():
    from fewstep.core.nets.unet import ResBlock

    den = tiny_unet_denoiser()
    found = blocks(den)  # the elements of the UNet's down / mid / up lists that hold weights
    net = den.net
    assert [id(b) for b in found] == [id(b) for b in (*net.down, *net.mid, *net.up) if list(b.parameters())]
    assert sum(isinstance(b, ResBlock) for b in found) == sum(isinstance(m, ResBlock) for m in den.modules())
    groups = shard_groups(den)
    assert groups[-1] is den and groups[: len(found)] == found
    owner = {}
    for g in groups:  # innermost first, as fully_shard is applied: a group takes what no inner one took
        for p in g.parameters():
            owner.setdefault(id(p), g)
    assert len(owner) == len(list(den.parameters()))
    assert not any(g is den for g in owner.values())  # the root keeps no loose parameters of its own


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients_and_names():
    den = tiny_unet_denoiser().train()
    den.net.cond_emb.label_dropout = 0.0
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5, dtype=torch.float64), torch.arange(4) % 3
    names = [n for n, _ in den.named_parameters()]
    block = blocks(den)[0]
    calls = []
    next(block.children()).register_forward_hook(lambda *a: calls.append(1))  # a layer inside the block

    def grads():
        den.zero_grad()
        calls.clear()
        den(x, t, y).pow(2).sum().backward()
        return [p.grad.clone() for p in den.parameters()], len(calls)

    plain, n_plain = grads()
    assert set_checkpointing(den, True) == len(blocks(den))
    ckpt, n_ckpt = grads()
    set_checkpointing(den, False)
    again, n_again = grads()
    assert (n_plain, n_ckpt, n_again) == (1, 2, 1)  # recomputed in backward, and off again
    for a, b, c in zip(plain, ckpt, again):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert [n for n, _ in den.named_parameters()] == names  # no wrapper prefixes in checkpoint keys


# -- world size 2 on gloo under torchrun: DDP and FSDP2, kill-free resume ------------------------------
N = 4  # the worker's N: 2N iterations straight vs N, then resumed to 2N


def _torchrun(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    runs = {}

    def get(*args):
        if args not in runs:
            runs[args] = _torchrun(tmp_path_factory.mktemp("-".join(args)), *args)
        return runs[args]

    return get


@pytest.mark.parametrize("args", [("ddp",), ("fsdp", "ac"), ("fsdp", "bf16")], ids=["ddp", "fsdp-ac", "fsdp-bf16"])
def test_world_size_2_ranks_agree_and_resume_is_exact(world2, args):
    """Two parts (the critic at its own rate, betas, clip and a 2:1 ratio) on two ranks: both ranks end
    with the same plain weights, training moved them, and N iterations then a resume to 2N in a
    fresh module equal 2N straight, bit for bit (model, EMA, losses)."""
    out = world2(*args)
    full, card = load_weights(out / "full_rank0")
    for name in ("full_rank1", "resumed_rank0", "resumed_rank1"):
        other, c = load_weights(out / name)
        for k, v in full.items():
            assert torch.equal(v, other[k]), (name, k)
        assert c["plain"] and c["updates"] == {"student": N, "critic": 2 * N}
    assert load_weights(out / "resumed_rank0")[1]["resumed_from"] == N
    assert load_weights(out / "resumed_rank0")[1]["losses"] == card["losses"]
    init = make_pair().state_dict()
    assert all(not torch.equal(init[k], full[f"model.{k}"]) for k in init if k.endswith("conv_in.weight"))


def test_fsdp_trains_what_ddp_trains_and_its_checkpoint_resumes_in_one_process(world2, tmp_path):
    """The same run sharded or replicated follows one loss curve to float rounding (the gradient
    reductions sum in another order), and the FSDP checkpoint is the one format: a single process
    continues it. (Weights are not compared: a conv bias before a GroupNorm has a gradient of pure
    round-off, which Adam turns into a +-lr step of either sign.)"""
    _, ddp = load_weights(world2("ddp") / "full_rank0")
    _, fsdp = load_weights(world2("fsdp", "ac") / "full_rank0")
    torch.testing.assert_close(torch.tensor(fsdp["losses"]), torch.tensor(ddp["losses"]), rtol=1e-5, atol=0)
    work = tmp_path / "work"
    shutil.copytree(world2("fsdp", "ac") / "full", work)
    cfg = TrainConfig(iterations=2 * N + 1, batch_size=8, lr=1e-2, warmup_iterations=1, save_every=N, progress=False, amp="off")
    res = train(make_pair(), pair_loss, list(pair_data()), cfg, work)
    assert res.resumed_from == 2 * N and res.iteration == 2 * N + 1


def test_fsdp_refuses_a_module_not_marked_ready(tmp_path, monkeypatch):
    """An objective whose ranks may call a net a different number of times (DMD2's backward
    simulation draws its rollout length per rank) would hang FSDP's collectives: refused up front."""
    from fewstep.core import train as train_mod
    from fewstep.core.distill.consistency import ConsistencyDistillation
    from fewstep.core.distill.dmd import DMD2

    assert ConsistencyDistillation.fsdp_ready and not DMD2.fsdp_ready
    m = TwoLinear((Part("student"), Part("critic")))
    m.fsdp_ready = False
    monkeypatch.setattr(train_mod, "init_distributed", lambda: (0, 2, torch.device("cpu")))
    with pytest.raises(ValueError, match="not marked FSDP-ready"):
        train(m, _two_loss, ONES, TrainConfig(iterations=1, batch_size=4, strategy="fsdp", progress=False), tmp_path)
