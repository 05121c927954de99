"""EcoDiff mask search: the trajectory, time-step gradient checkpointing, learned vs random masks, prune()."""

import pytest
import torch

from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.prune import (
    PruneConfig,
    SavedTensorBytes,
    UnitMasks,
    apply_plan,
    attach_masks,
    discover_units,
    param_count,
    plan_from_scores,
    prune,
    random_scores,
    search_masks,
    trajectory,
)
from fewstep.core.prune.search import draw, time_grid, trajectory_loss
from fewstep.core.solvers import sample

from .test_units import K, tiny_dit, tiny_unet, wrap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trajectory_matches_fewstep_ddim():
    den = wrap(tiny_unet())
    x_T, cond = draw(den, 3, torch.Generator().manual_seed(0), "cpu")
    ts = time_grid(den, 6)
    with torch.no_grad():
        ours = trajectory(den, x_T, ts, cond)
    ref = sample(den, x_T, "ddim", 6, "logsnr", cond=cond, denoise_to_zero=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def mask_grads(den, checkpoint: bool, steps: int = 6, measure: bool = False):
    """Gradients of the trajectory loss w.r.t. the mask logits (same noise, labels and gate samples)."""
    units = discover_units(den.net)
    masks = UnitMasks(units, init=1.0)
    den.net.requires_grad_(False)
    hooks = attach_masks(den.net, units)
    g = torch.Generator().manual_seed(0)
    x_T, cond = draw(den, 2, g, "cpu")
    gates = masks.gates(g)
    meter = SavedTensorBytes(ignore=den.net.parameters())
    with meter:
        rec, _ = trajectory_loss(den, hooks, gates, x_T, time_grid(den, steps), cond, None, checkpoint)
    rec.backward()
    hooks.remove()
    return [lg.grad.clone() for lg in masks.logits], meter.bytes, x_T


@pytest.mark.parametrize("make", [tiny_unet, tiny_dit], ids=["unet", "dit"])
def test_checkpointing_gives_the_same_mask_gradients(make):
    den = wrap(make())
    plain, _, _ = mask_grads(den, checkpoint=False)
    ckpt, _, _ = mask_grads(den, checkpoint=True)
    assert any(g.abs().max() > 0 for g in plain)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)


def test_checkpointing_saves_far_less_activation_memory():
    den = wrap(tiny_unet())
    steps = 10
    _, plain, x_T = mask_grads(den, checkpoint=False, steps=steps)
    _, ckpt, _ = mask_grads(den, checkpoint=True, steps=steps)
    ckpt += steps * x_T.nbytes  # what the checkpoints themselves keep: each step's x_t
    assert plain > 20 * ckpt, (plain, ckpt)


def final_error(den, pruned, n=16, steps=6):
    x_T, cond = draw(den, n, torch.Generator().manual_seed(1234), "cpu")  # held-out noise
    ts = time_grid(den, steps)
    with torch.no_grad():
        ref = trajectory(den, x_T, ts, cond)
        return float((trajectory(pruned, x_T, ts, cond) - ref).square().mean() / ref.square().mean())


def test_learned_masks_beat_random_masks():
    den = wrap(tiny_unet(channels=8, seed=1))
    cfg = PruneConfig(ratio=0.4, num_steps=6, iters=20, batch=4, seed=0, progress=False)
    found = search_masks(den, cfg)
    assert found.history[-1]["kept"] < found.history[0]["kept"]  # the sparsity term pulls gates shut
    plan, _ = plan_from_scores(found.units, found.logits, cfg.ratio)
    learned = final_error(den, apply_plan(den, plan))
    chance = []
    for seed in range(4):
        rplan, _ = plan_from_scores(found.units, random_scores(found.units, seed), cfg.ratio)
        chance.append(final_error(den, apply_plan(den, rplan)))
    assert learned < min(chance), (learned, chance)
    assert learned < 0.5 * sum(chance) / len(chance), (learned, chance)


def test_prune_returns_a_new_smaller_denoiser(tmp_path):
    den = wrap(tiny_dit(), steps=4)  # a 4-step student: searched over its own 4 steps
    state = {k: v.clone() for k, v in den.state_dict().items()}
    out = prune(den, PruneConfig(ratio=0.3, iters=3, batch=2, progress=False))
    info = out.card.provenance["prune"]
    assert info["trajectory_steps"] == 4 and info["ratio"] == 0.3
    assert info["params_after"] == param_count(out) < param_count(den) == info["params_before"]
    assert info["gflops_after"] < info["gflops_before"]
    largest = max(max(u.params) for u in discover_units(den.net))
    assert abs(info["removed_params"] - 0.3 * info["prunable_params"]) <= largest
    assert (out.card.student_steps, out.num_classes, out.prediction, out.sample_shape) == (4, K, "eps", (1, 8, 8))
    # The input is untouched: same weights, trainable, no hooks.
    assert all(torch.equal(v, state[k]) for k, v in den.state_dict().items())
    assert all(p.requires_grad for p in den.parameters()) and all(p.requires_grad for p in out.parameters())
    assert not den.net.blocks[0].attn.proj._forward_pre_hooks
    save_denoiser(out, tmp_path / "pruned")
    back = load_denoiser(tmp_path / "pruned")
    x_T, cond = draw(den, 2, torch.Generator().manual_seed(0), "cpu")
    ts = time_grid(den, 4)
    with torch.no_grad():
        assert torch.equal(trajectory(back, x_T, ts, cond), trajectory(out, x_T, ts, cond))
    assert back.card.provenance["prune"]["removed_params"] == info["removed_params"]
