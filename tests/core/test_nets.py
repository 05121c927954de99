"""Contract tests for fewstep.core.nets (UNet, DiT): shapes, conditioning, CFG dropout, configs."""

import json

import pytest
import torch
from fewstep.core.nets import NETS, DiT, DiTConfig, UNet, UNetConfig, build_net, net_spec

B, C, S, K, D = 4, 1, 8, 3, 5  # batch, channels, image side, classes, cond_dim
KINDS = ["unet", "dit"]
MODES = ["labels", "embed", "none"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(kind: str, mode: str = "labels", **kw):
    cond = {"labels": {"num_classes": K}, "embed": {"cond_dim": D}, "none": {}}[mode]
    if kind == "unet":
        base = {
            "in_channels": C,
            "image_size": S,
            "channels": 8,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attn_resolutions": (4,),
        }
        return UNetConfig(**{**base, **cond, **kw})
    base = {
        "in_channels": C,
        "image_size": S,
        "patch_size": 2,
        "hidden_size": 16,
        "depth": 2,
        "num_heads": 2,
    }
    return DiTConfig(**{**base, **cond, **kw})


def tiny_net(kind: str, mode: str = "labels", perturb: bool = True, **kw):
    """A tiny net; `perturb` fills the zero-initialised weights so the output depends on cond."""
    cfg = tiny_config(kind, mode, **kw)
    net = NETS[kind][1](cfg)
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                if not p.any():
                    p.normal_(std=0.1)
    return net


def inputs(b: int = B):
    return torch.randn(b, C, S, S), torch.rand(b) * 1000


def some_cond(mode: str, b: int = B):
    if mode == "labels":
        return torch.arange(b) % K
    if mode == "embed":
        return torch.randn(b, D)
    return None


def null_cond(mode: str, b: int = B):
    if mode == "labels":
        return torch.full((b,), K)
    return torch.full((b, D), float("nan"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_output_shape_and_scalar_t(kind, mode):
    net = tiny_net(kind, mode).eval()
    x, t = inputs()
    cond = some_cond(mode)
    out = net(x, t, cond)
    assert out.shape == (B, C, S, S) and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    # A Python float or a 0-d tensor broadcasts to the batch.
    assert torch.allclose(net(x, 250.0, cond), net(x, torch.full((B,), 250.0), cond))
    assert torch.allclose(net(x, torch.tensor(250.0), cond), net(x, 250.0, cond))


@pytest.mark.parametrize("kind", KINDS)
def test_out_channels_and_zero_init(kind):
    net = tiny_net(kind, "none", perturb=False, out_channels=2)
    x, t = inputs()
    out = net(x, t)
    assert out.shape == (B, 2, S, S)
    assert (out == 0).all()  # zero-initialised output layer: a fresh net predicts zeros


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["labels", "embed"])
def test_null_rows_equal_uncond_in_eval(kind, mode):
    net = tiny_net(kind, mode).eval()
    x, t = inputs()
    uncond = net(x, t, None)
    assert torch.allclose(net(x, t, null_cond(mode)), uncond, atol=1e-6)
    if mode == "labels":
        assert torch.allclose(net(x, t, torch.full((B,), -1)), uncond, atol=1e-6)
    # Eval is deterministic even with label_dropout > 0.
    cond = some_cond(mode)
    assert torch.equal(net(x, t, cond), net(x, t, cond))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["labels", "embed"])
def test_label_dropout_acts_only_in_training(kind, mode):
    x, t = inputs()
    cond = some_cond(mode)
    net = tiny_net(kind, mode, label_dropout=1.0)
    uncond = net.eval()(x, t, None)
    cond_out = net(x, t, cond)
    assert not torch.allclose(cond_out, uncond, atol=1e-4)
    # label_dropout=1: every row is dropped to null in training mode, never in eval mode.
    assert torch.allclose(net.train()(x, t, cond), uncond, atol=1e-6)
    # label_dropout=0: training mode keeps the conditioning (dropout=0, no other randomness).
    net0 = tiny_net(kind, mode, label_dropout=0.0)
    net0.load_state_dict(net.state_dict())
    assert torch.allclose(net0.train()(x, t, cond), cond_out, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["labels", "embed"])
def test_mixed_batch_equals_separate_calls(kind, mode):
    net = tiny_net(kind, mode).eval()
    x, t = inputs()
    cond, null = some_cond(mode), null_cond(mode)
    keep = torch.tensor([True, False, True, False])
    mixed = torch.where(keep if mode == "labels" else keep[:, None], cond, null)
    out = net(x, t, mixed)
    for i in range(B):
        row = net(x[i : i + 1], t[i : i + 1], cond[i : i + 1] if keep[i] else None)
        assert torch.allclose(out[i : i + 1], row, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["labels", "embed"])
def test_output_depends_on_cond(kind, mode):
    net = tiny_net(kind, mode).eval()
    x, t = inputs(1)
    x, t = x.expand(B, -1, -1, -1), t.expand(B)  # same image and time, different cond per row
    out = net(x, t, some_cond(mode))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_few_sgd_steps_from_zero_init_learn_cond(kind):
    net = tiny_net(kind, "labels", perturb=False, label_dropout=0.0)
    x, t = inputs()
    y = torch.arange(B) % K
    target = y.float()[:, None, None, None].expand(B, C, S, S)  # output must encode the label
    # Sign-SGD by hand, like Adam's early steps (torch.optim's first use imports torch._dynamo).
    for _ in range(5):
        net.zero_grad()
        (net(x, t, y) - target).square().mean().backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 1e-2 * p.grad.sign()
    out = net.eval()(x[:1].expand(2, -1, -1, -1), t[:1].expand(2), torch.tensor([0, 2]))
    assert (out[0] - out[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_and_unknown_key(kind):
    cfg = tiny_config(kind, "labels")
    d = json.loads(json.dumps(cfg.to_dict()))  # JSON-serialisable
    assert type(cfg).from_dict(d) == cfg
    with pytest.raises(ValueError, match="bogus"):
        type(cfg).from_dict({**d, "bogus": 1})


@pytest.mark.parametrize(
    "cls, kw",
    [
        (UNetConfig, {"image_size": 12, "channel_mult": (1, 2, 2)}),  # 12 not divisible by 4
        (UNetConfig, {"image_size": 16, "attn_resolutions": (2,)}),  # resolution never reached
        (UNetConfig, {"num_classes": 3, "cond_dim": 4}),
        (UNetConfig, {"label_dropout": 1.5}),
        (DiTConfig, {"hidden_size": 30, "num_heads": 4}),
        (DiTConfig, {"image_size": 30, "patch_size": 4}),
    ],
)
def test_invalid_config_raises(cls, kw):
    with pytest.raises(ValueError):
        cls(**kw)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_raise_helpful_errors(kind):
    net = tiny_net(kind, "labels")
    x, t = inputs()
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 8, 8\), got \(4, 3, 8, 8\)"):
        net(torch.randn(B, 3, S, S), t)
    with pytest.raises(ValueError, match="in_channels / image_size"):
        net(torch.randn(B, C, S + 2, S + 2), t)
    with pytest.raises(ValueError, match="float tensor"):
        net(x.long(), t)
    with pytest.raises(ValueError, match="t of shape"):
        net(x, torch.rand(B + 1))
    with pytest.raises(ValueError, match="integer class labels"):
        net(x, t, torch.randn(B, D))
    with pytest.raises(ValueError, match="labels must lie in"):
        net(x, t, torch.full((B,), K + 1))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_net(kind, "none")(x, t, torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        tiny_net(kind, "embed")(x, t, torch.randn(B, D + 1))


@pytest.mark.parametrize("kind", KINDS)
def test_build_net_and_net_spec_round_trip(kind):
    net = tiny_net(kind, "embed").eval()
    spec_kind, spec = net_spec(net)
    assert spec_kind == kind
    rebuilt = build_net(*json.loads(json.dumps([spec_kind, spec])))
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    x, t = inputs()
    cond = some_cond("embed")
    assert torch.equal(rebuilt.eval()(x, t, cond), net(x, t, cond))


def test_build_net_unknown_kind_and_net_spec_foreign_module():
    with pytest.raises(ValueError, match=r"unknown net kind 'resnet'; known kinds are \[.*'dit'.*'unet'"):
        build_net("resnet", {})
    with pytest.raises(ValueError, match="not one of fewstep's nets"):
        net_spec(torch.nn.Linear(2, 2))
    assert isinstance(build_net("unet", tiny_config("unet")), UNet)
    assert isinstance(build_net("dit", tiny_config("dit").to_dict()), DiT)
