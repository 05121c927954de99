"""Quantization: error bounds of each format, the layer's integer formula, calibration, TFMQ, export."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.io import read_card
from fewstep.core.quant import QuantConfig, QuantLayer, plan_layers, quantize, set_backend, weight_bytes
from fewstep.core.quant.calibrate import calibration_set
from fewstep.core.quant.qtensor import FP8_MAX, pack_int4, quantize_weight, unpack_int4
from fewstep.core.quant.tfmq import CachedTimeEmbedding
from fewstep.core.solvers import sample

from ..tiny import tiny_dit_denoiser, tiny_unet_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- formats ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_integer_weight_error_is_at_most_half_a_step(bits):
    w = torch.randn(16, 40) * torch.rand(16, 1) * 3
    q, s = quantize_weight(w, bits)
    assert q.dtype == torch.int8 and q.abs().max() <= 2 ** (bits - 1) - 1
    err = (w - q.float() * s[:, None]).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()
    assert torch.allclose(s, w.abs().amax(1) / (2 ** (bits - 1) - 1))


def test_fp8_weight_relative_error_bound():
    w = torch.randn(16, 64)
    q, s = quantize_weight(w, "fp8")
    assert q.dtype == torch.float8_e4m3fn and q.float().abs().max() <= FP8_MAX
    err = (w - q.float() * s[:, None]).abs()
    # e4m3: 3 mantissa bits -> relative rounding error <= 2^-4; subnormals: absolute 2^-10 * scale.
    assert (err <= w.abs() * 2**-4 + 2**-10 * s[:, None] + 1e-7).all()


@pytest.mark.parametrize("k", [6, 7])
def test_int4_packing_round_trips(k):
    q = torch.randint(-8, 8, (5, k), dtype=torch.int8)
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(p, k), q)
    with pytest.raises(ValueError, match="\\[-8, 7\\]"):
        pack_int4(torch.full((1, 2), 9, dtype=torch.int8))


# -- the layer ----------------------------------------------------------------------------------
def test_linear_layer_is_the_integer_formula():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10)
    x = torch.randn(7, 24)
    x = x.clamp(-3, 3)  # inside the calibrated range: no clipping
    q = QuantLayer.from_float(lin, weight_format="int8", act="static", in_scale=torch.tensor(3.0 / 127))
    # By hand: snap x to the calibrated grid, multiply by the dequantized weight.
    s = 3.0 / 127
    xq = torch.clamp(torch.round(x / s), -127, 127) * s
    expect = F.linear(xq, q.dequantized_weight(), lin.bias)
    q.backend = "int_mm"
    out_int = q(x)
    q.backend = "reference"
    out_ref = q(x)
    assert torch.allclose(out_int, out_ref, atol=1e-6)  # int32 accumulation == exact float sums
    assert torch.allclose(out_ref, expect, atol=1e-5)
    assert rel(out_ref, lin(x)) < 0.02


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (1, 1, 0), (3, 2, 1), (2, 2, 0)])
@pytest.mark.parametrize("act", ["none", "static", "token"])
def test_conv_paths_agree_with_conv2d(kernel, stride, padding, act):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 6, 8, 8)
    scale = torch.tensor(4.0 / 127) if act == "static" else None
    q = QuantLayer.from_float(conv, weight_format="int8", act=act, in_scale=scale)
    outs = {}
    for backend in ("dequant", "int_mm", "reference"):
        q.backend = backend
        outs[backend] = q(x)
    assert outs["dequant"].shape == conv(x).shape
    assert torch.allclose(outs["int_mm"], outs["reference"], atol=1e-5)
    assert torch.allclose(outs["dequant"], outs["reference"], atol=1e-4)
    assert rel(outs["dequant"], conv(x)) < 0.03


def test_layer_keeps_its_storage_formats_under_dtype_casts():
    q = QuantLayer.from_float(nn.Linear(32, 16), weight_format="fp8", act="token").to(torch.bfloat16)
    assert q.qweight.dtype == torch.float8_e4m3fn and q.w_scale.dtype == torch.float32
    assert q(torch.randn(4, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    q4 = QuantLayer.from_float(nn.Linear(32, 16), weight_format="int4", act="none").half()
    assert q4.qweight.dtype == torch.uint8


def test_layer_rejects_bad_inputs():
    q = QuantLayer.from_float(nn.Linear(8, 4), weight_format="int8", act="none")
    with pytest.raises(ValueError, match="8 input features"):
        q(torch.randn(2, 5))
    with pytest.raises(TypeError, match="nn.Linear and nn.Conv2d"):
        QuantLayer.from_float(nn.GRU(2, 2), weight_format="int8", act="none")
    with pytest.raises(ValueError, match="groups=1"):
        QuantLayer.from_float(nn.Conv2d(4, 4, 3, groups=2), weight_format="int8", act="none")


def test_config_validation_says_what_to_do():
    with pytest.raises(ValueError, match="w8a8, w4a8"):
        QuantConfig(scheme="w3")
    with pytest.raises(ValueError, match="weight-only"):
        QuantConfig(scheme="w8", act="static")
    with pytest.raises(ValueError, match="calibration"):
        QuantConfig(calibration="random")
    with pytest.raises(TypeError, match="Denoiser"):
        quantize(nn.Linear(2, 2))


# -- the verb -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_unet_denoiser, tiny_dit_denoiser])
def test_schemes_order_by_bits_and_shrink_weights(make):
    den = make()
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 3
    with torch.no_grad():
        ref = sample(den, x, "ddim", 6, cond=c)  # same steps as the calibration trajectories
        errs, sizes = {}, {}
        for scheme in ("w8a8", "w4a8", "w8", "w4", "fp8"):
            q = quantize(den, QuantConfig(scheme=scheme, calib_samples=8, calib_steps=6, keep=(), group_size=0))
            errs[scheme] = rel(sample(q, x, "ddim", 6, cond=c), ref)
            sizes[scheme] = sum(m.weight_bytes() for m in q.net.modules() if isinstance(m, QuantLayer))
    fp_bytes = sum(m.weight.numel() * 4 for m in den.net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                   and m.weight.numel() > 0)
    assert errs["w8"] < errs["w4"] and errs["w8a8"] < errs["w4a8"]
    assert errs["w8"] < 0.05 and errs["w8a8"] < 0.15 and errs["fp8"] < 0.3  # random tiny nets: loose
    assert sizes["w4"] < 0.6 * sizes["w8"] and sizes["w8"] < 0.35 * fp_bytes


def test_quantize_leaves_the_original_alone_and_refuses_twice():
    den = tiny_unet_denoiser()
    before = {k: v.clone() for k, v in den.net.state_dict().items()}
    q = quantize(den, QuantConfig(calib_samples=4, calib_steps=4))
    assert all(torch.equal(before[k], v) for k, v in den.net.state_dict().items())
    assert not any(isinstance(m, QuantLayer) for m in den.net.modules())
    assert q.card.provenance["quant"]["weight_bytes"] < q.card.provenance["quant"]["fp32_weight_bytes"]
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q)


def test_first_and_last_layers_stay_full_precision_by_default():
    plan = plan_layers(tiny_unet_denoiser().net, QuantConfig())
    assert "conv_in" not in plan and "conv_out" not in plan and "down.0.conv0" in plan
    assert not any(name.startswith("time_mlp") for name in plan)  # TFMQ: cached, not quantized


def test_split_shortcut_gives_each_half_of_a_skip_concat_its_own_scale():
    den = tiny_unet_denoiser()
    net = den.net
    name = next(f"up.{i}" for i, b in enumerate(net.up) if getattr(b, "concat_split", 0))
    split = net.get_submodule(name).concat_split
    plan = plan_layers(net, QuantConfig())
    assert plan[f"{name}.conv0"]["groups"] == [(0, split), (split, net.get_submodule(name).conv0.in_channels)]
    assert len(plan_layers(net, QuantConfig(split_shortcut=False))[f"{name}.conv0"]["groups"]) == 1
    q = quantize(den, QuantConfig(calib_samples=6, calib_steps=5))
    layer = q.net.get_submodule(f"{name}.conv0")
    per_channel = layer.in_scale.view(layer.conv["in_channels"], -1)[:, 0]
    assert len(per_channel[:split].unique()) == 1 and len(per_channel[split:].unique()) == 1
    assert per_channel[0] != per_channel[split]


def test_calibration_set_draws_the_requested_steps():
    den = tiny_unet_denoiser()
    traj = calibration_set(den, QuantConfig(calib_samples=5, calib_steps=4))
    single = calibration_set(den, QuantConfig(calibration="single", single_step=1.0, calib_samples=5, calib_steps=4))
    ndtc = calibration_set(den, QuantConfig(calibration="ptq4dm", calib_samples=40, calib_steps=8))
    assert len(traj) == 20 and len(traj.t.unique()) == 4
    assert len(single) == 5 and len(single.t.unique()) == 1 and single.t[0] == traj.t.min()
    assert len(ndtc) == 40 and len(ndtc.t.unique()) >= 4
    with pytest.raises(ValueError, match="one-evaluation-per-step"):
        calibration_set(den, QuantConfig(calib_solver="heun", calib_samples=2, calib_steps=3))


def test_tfmq_cache_returns_the_full_precision_time_features():
    den = tiny_unet_denoiser()
    q = quantize(den, QuantConfig(calib_samples=4, calib_steps=5))
    cache = q.net.time_mlp
    assert isinstance(cache, CachedTimeEmbedding) and len(cache.t_values) == 5
    from fewstep.core.nets.embeddings import timestep_embedding

    seen = {}
    cache.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    for t in [*cache.t_values.tolist(), 123.25]:  # every cached step, then one the sampler never visited
        seen.clear()
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            q.net(x, torch.full((3,), t), torch.arange(3))
            expect = den.net.time_mlp(timestep_embedding(torch.full((3,), t), den.net.config.channels))
        assert torch.allclose(seen["out"], expect, atol=1e-6)
    assert cache.hits == 15  # the five cached steps were looked up, the sixth was computed


def test_per_step_scales_for_the_layers_reading_the_time_embedding():
    q = quantize(tiny_unet_denoiser(), QuantConfig(calib_samples=4, calib_steps=5))
    affine = q.net.get_submodule("down.0.affine")
    assert affine.act == "per_t" and len(affine.t_scale) == 5 and len(affine.t_scale.unique()) > 1
    off = quantize(tiny_unet_denoiser(), QuantConfig(calib_samples=4, calib_steps=5, tfmq=False))
    assert off.net.get_submodule("down.0.affine").act == "static"


@pytest.mark.parametrize("scheme", ["w4a8", "fp8", "w8"])
def test_saved_quantized_model_loads_identically(tmp_path, scheme):
    den = tiny_unet_denoiser()
    q = quantize(den, QuantConfig(scheme=scheme, calib_samples=4, calib_steps=5))
    save_denoiser(q, tmp_path / "q")
    back = load_denoiser(tmp_path / "q")
    assert read_card(tmp_path / "q")["transforms"][0]["kind"] == "quant"
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.arange(6) % 3
    with torch.no_grad():
        a = sample(q, x, "ddim", 5, cond=c)
        b = sample(back, x, "ddim", 5, cond=c)
    assert torch.equal(a, b)
    if scheme == "w4a8":
        assert back.net.get_submodule("down.0.conv0").qweight.dtype == torch.uint8  # packed on disk too
    assert weight_bytes(back.net) == weight_bytes(q.net)


def test_set_backend_validates():
    q = quantize(tiny_unet_denoiser(), QuantConfig(scheme="w8", calib_samples=2, calib_steps=2))
    set_backend(q, "reference")
    assert all(m.backend == "reference" for m in q.modules() if isinstance(m, QuantLayer))
    with pytest.raises(ValueError, match="backend"):
        set_backend(q, "cuda-magic")


def test_pruned_then_quantized_model_round_trips(tmp_path):
    from fewstep.core.prune import PruneConfig, prune

    den = tiny_unet_denoiser()
    pruned = prune(den, PruneConfig(ratio=0.3, iters=2, num_steps=3, progress=False))
    q = quantize(pruned, QuantConfig(scheme="w4a8", calib_samples=4, calib_steps=4))
    save_denoiser(q, tmp_path / "pq")
    back = load_denoiser(tmp_path / "pq")
    assert [s["kind"] for s in read_card(tmp_path / "pq")["transforms"]] == ["prune", "quant"]
    x, t, c = torch.randn(3, 1, 8, 8), torch.full((3,), 300.0), torch.arange(3)
    with torch.no_grad():
        assert torch.equal(q.net(x, t, c), back.net(x, t, c))


# -- group-wise weight scales -------------------------------------------------------------------
def test_grouped_weight_scales_follow_the_range_along_k():
    w = torch.randn(8, 50)
    w[:, :10] *= 20  # one loud group: per-channel scales would flatten the rest
    q, s = quantize_weight(w, 4, group=16)
    assert s.shape == (8, 4)  # ceil(50 / 16) groups, the last one short
    from fewstep.core.quant.qtensor import expand_groups

    err = (w - q.float() * expand_groups(s, 16, 50)).abs()
    assert (err <= expand_groups(s, 16, 50) / 2 + 1e-6).all()
    q1, s1 = quantize_weight(w, 4)
    assert err[:, 16:].mean() < 0.3 * (w - q1.float() * s1[:, None]).abs()[:, 16:].mean()
    with pytest.raises(ValueError, match="per-channel"):
        quantize_weight(w, "fp8", group=16)


@pytest.mark.parametrize("act", ["static", "token", "none"])
def test_grouped_layer_integer_paths_agree(act):
    torch.manual_seed(0)
    lin = nn.Linear(40, 12)
    x = torch.randn(9, 40).clamp(-3, 3)
    scale = torch.tensor(3.0 / 127) if act == "static" else None
    q = QuantLayer.from_float(lin, weight_format="int4", act=act, in_scale=scale, group=16)
    outs = {}
    for backend in ("int_mm", "reference"):
        q.backend = backend
        outs[backend] = q(x)
    assert torch.allclose(outs["int_mm"], outs["reference"], atol=1e-5)
    per_channel = QuantLayer.from_float(lin, weight_format="int4", act=act, in_scale=scale)
    assert rel(outs["reference"], lin(x)) < rel(per_channel(x), lin(x))


def test_grouped_w4a8_saves_loads_and_reconstructs(tmp_path):
    den = tiny_unet_denoiser()
    q = quantize(den, QuantConfig(scheme="w4a8", group_size=8, calib_samples=4, calib_steps=4,
                                  reconstruction="brecq", recon_iters=5))
    layer = q.net.get_submodule("down.0.conv0")
    assert layer.group == 8 and layer.w_scale.ndim == 2
    save_denoiser(q, tmp_path / "g")
    back = load_denoiser(tmp_path / "g")
    x, t, c = torch.randn(3, 1, 8, 8), torch.full((3,), 300.0), torch.arange(3)
    with torch.no_grad():
        assert torch.equal(q.net(x, t, c), back.net(x, t, c))
    with pytest.raises(ValueError, match="group_size"):
        QuantConfig(scheme="fp8", group_size=32)
