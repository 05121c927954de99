"""Pruning units and thresholding: discovery, the removed share of parameters, validation errors.

Also holds the tiny nets the other test_prune_* modules import.
"""

import pytest
import torch
from torch import nn

from fewstep.core.card import ModelCard
from fewstep.core.denoiser import Denoiser
from fewstep.core.nets import DiT, DiTConfig, UNet, UNetConfig
from fewstep.core.prune import (
    PruneConfig,
    apply_plan,
    discover_units,
    flops,
    param_count,
    plan_from_scores,
    prunable_params,
    prune,
    prune_units,
    random_scores,
)
from fewstep.core.schedules import VPDiscrete

from ..tiny import tiny_denoiser

K = 3  # classes


def perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Fill the zero-initialised weights (output conv, adaLN) so every unit affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def tiny_unet(channels: int = 8, heads: bool = False, seed: int = 0) -> UNet:
    """8x8 U-Net; ``heads`` widens it so its attention has 2 heads of 64 (prunable)."""
    torch.manual_seed(seed)
    ch = 64 if heads else channels
    cfg = UNetConfig(in_channels=1, image_size=8, channels=ch, channel_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(4,), num_classes=K)
    return perturbed(UNet(cfg), seed).eval()


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    cfg = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=K)
    return perturbed(DiT(cfg), seed).eval()


def wrap(net: nn.Module, steps: int | None = None) -> Denoiser:
    return Denoiser(net, VPDiscrete(), "eps", sample_shape=(1, 8, 8), num_classes=K, card=ModelCard(student_steps=steps)).eval()


def test_units_found_in_unet_and_dit():
    u = discover_units(tiny_unet(heads=True))
    kinds = {x.kind for x in u}
    assert kinds == {"res", "heads"}
    assert [x.path for x in u if x.kind == "heads"] == ["down.2.attn", "mid.0.attn", "up.0.attn"]
    assert all(x.count == 2 and x.sizes == (64, 64) for x in u if x.kind == "heads")
    d = discover_units(tiny_dit(), mlp_group=8)
    assert [(x.kind, x.count) for x in d] == [("heads", 4), ("mlp", 16)] * 2
    assert discover_units(tiny_dit(), kinds=("mlp",), mlp_group=32) == [
        x for x in discover_units(tiny_dit(), mlp_group=32) if x.kind == "mlp"
    ]


@pytest.mark.parametrize(
    "make", [tiny_unet, lambda: tiny_unet(heads=True), tiny_dit], ids=["unet", "unet-heads", "dit"]
)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.8])
def test_threshold_removes_requested_share_within_one_unit(make, ratio):
    net = make()
    units = discover_units(net)
    plan, removed = plan_from_scores(units, random_scores(units, seed=3), ratio)
    target = ratio * prunable_params(units)
    assert abs(removed - target) <= max(max(u.params) for u in units)
    assert all(len(kept) >= 1 for kept in plan.values())  # never an empty layer
    # The unit parameter bookkeeping matches what physical removal takes away.
    before = param_count(net)
    prune_units(net, plan)
    assert before - param_count(net) == removed


def test_layers_keep_one_unit_at_extreme_ratio():
    units = discover_units(tiny_dit())
    plan, _ = plan_from_scores(units, [torch.zeros(u.count) for u in units], 0.99)
    assert all(len(kept) == 1 for kept in plan.values())


def test_pruned_params_and_flops_strictly_lower():
    den = wrap(tiny_unet())
    units = discover_units(den.net)
    plan, _ = plan_from_scores(units, random_scores(units), 0.3)
    small = apply_plan(den, plan, ratio=0.3)
    assert param_count(small) < param_count(den)
    assert flops(small) < flops(den)
    assert param_count(den) == param_count(tiny_unet())  # the input is not modified


def test_bad_configs_raise_clear_errors():
    for r in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            PruneConfig(ratio=r)
    with pytest.raises(ValueError, match="ddim"):
        PruneConfig(ratio=0.2, solver="dpmpp_2m")
    with pytest.raises(ValueError, match="kinds"):
        PruneConfig(ratio=0.2, kinds=("conv",))
    with pytest.raises(ValueError, match="iters"):
        PruneConfig(ratio=0.2, iters=0)
    with pytest.raises(TypeError, match="UNet and DiT"):
        prune(tiny_denoiser(), PruneConfig(ratio=0.2, iters=1))
    with pytest.raises(TypeError, match="PruneConfig"):
        prune(wrap(tiny_unet()), {"ratio": 0.2})
    with pytest.raises(TypeError, match="Denoiser"):
        prune(tiny_unet(), PruneConfig(ratio=0.2))


def test_bad_plans_raise_clear_errors():
    net = tiny_unet()
    with pytest.raises(ValueError, match="at least one unit"):
        prune_units(net, {"down.0": []})
    with pytest.raises(ValueError, match="not a prunable unit set"):
        prune_units(net, {"conv_in": [0]})
    with pytest.raises(ValueError, match="units 0..7"):
        prune_units(net, {"down.0": [0, 8]})
