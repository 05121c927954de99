"""Physical removal: the pruned net computes what the masked net computes; checkpoints round-trip."""

import pytest
import torch

from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.nets import build_net, net_spec
from fewstep.core.prune import (
    apply_plan,
    attach_masks,
    discover_units,
    param_count,
    plan_from_scores,
    plan_gates,
    random_scores,
    remove_masks,
    restore_structure,
)
from fewstep.core.prune.modules import PrunedAttention, PrunedSelfAttention
from fewstep.core.transforms import recorded

from .test_units import K, tiny_dit, tiny_unet, wrap

NETS = {"unet": tiny_unet, "unet-heads": lambda: tiny_unet(heads=True), "dit": tiny_dit}


def inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 8, 8, generator=g)
    t = torch.tensor([50.0, 400.0, 900.0])[:b]  # network time (0..1000)
    return x, t, torch.arange(b) % K


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_physically_pruned_equals_masked(name, ratio):
    net = NETS[name]()
    units = discover_units(net)
    plan, _ = plan_from_scores(units, random_scores(units, seed=1), ratio)
    x, t, c = inputs()
    with torch.no_grad():
        full = net(x, t, c)
        attach_masks(net, units, plan_gates(units, plan))
        masked = net(x, t, c)
        remove_masks(net)
        assert torch.equal(net(x, t, c), full)  # hooks gone: the plain net again
        pruned = apply_plan(wrap(net), plan).net
        out = pruned(x, t, c)
    assert not torch.allclose(masked, full, atol=1e-3)  # the mask does something
    torch.testing.assert_close(out, masked, rtol=1e-5, atol=1e-5)
    assert param_count(pruned) < param_count(net)
    if name == "dit":
        assert all(isinstance(b.attn, PrunedAttention) for b in pruned.blocks)
    if name == "unet-heads" and any(len(plan[u.path]) < 2 for u in units if u.kind == "heads"):
        assert any(isinstance(m, PrunedSelfAttention) for m in pruned.modules())


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_save_load_round_trip(tmp_path, name):
    den = wrap(NETS[name]())
    units = discover_units(den.net)
    plan, _ = plan_from_scores(units, random_scores(units, seed=2), 0.4)
    pruned = apply_plan(den, plan, ratio=0.4)
    pruned.card = pruned.card.with_provenance(note="pruned in a test")
    save_denoiser(pruned, tmp_path / "p")
    back = load_denoiser(tmp_path / "p")
    assert recorded(back.net) == recorded(pruned.net) and recorded(back.net)[0]["kind"] == "prune"
    assert back.card.provenance["note"] == "pruned in a test"
    x, _, c = inputs()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(back(x, t, c), pruned(x, t, c))
    # Pruning again stacks: both plans are replayed in order.
    units2 = discover_units(back.net)
    plan2, _ = plan_from_scores(units2, random_scores(units2, seed=5), 0.3)
    twice = apply_plan(back, plan2, ratio=0.3)
    save_denoiser(twice, tmp_path / "q")
    again = load_denoiser(tmp_path / "q")
    assert len(recorded(again.net)) == 2 and param_count(again) == param_count(twice) < param_count(back)
    with torch.no_grad():
        assert torch.equal(again(x, t, c), twice(x, t, c))


def test_restore_structure_rebuilds_shapes():
    net = tiny_dit()
    units = discover_units(net)
    plan, _ = plan_from_scores(units, random_scores(units), 0.5)
    pruned = apply_plan(wrap(net), plan, ratio=0.5).net
    fresh = build_net(*net_spec(net))  # random weights, original shapes
    restore_structure(fresh, recorded(pruned)[0])
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    with pytest.raises(ValueError, match="pruning spec"):
        restore_structure(fresh, {"kind": "quant"})
