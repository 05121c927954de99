"""GPU paths of the quantized layers agree with the float reference (skipped without CUDA)."""

import pytest
import torch

from fewstep.core.quant.kernels import reference, run_matmul
from fewstep.core.quant.layers import QuantLayer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _layer(fmt, act, n=384, k=320, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n).cuda()
    scale = torch.tensor(0.05) if act == "static" else None
    return QuantLayer.from_float(lin, weight_format=fmt, act=act, in_scale=scale)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("backend", ["triton", "int_mm"])
def test_int_kernels_match_reference(fmt, backend):
    q = _layer(fmt, "token")
    x = torch.randn(1000, 320, device="cuda")
    q.backend = "reference"
    ref = q(x)
    q.backend = backend
    out = q(x)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_weight_only_kernel_matches_reference(fmt):
    q = _layer(fmt, "none")
    x = torch.randn(257, 320, device="cuda", dtype=torch.bfloat16)
    q.backend = "reference"
    ref = q(x.float())
    q.backend = "triton"
    out = q(x)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel  # bf16 activations


def test_fp8_scaled_mm_matches_reference():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm >= 89")
    q = _layer("fp8", "token")
    x = torch.randn(512, 320, device="cuda")
    q.backend = "reference"
    ref = q(x)
    q.backend = "scaled_mm"
    out = q(x)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, rel  # bf16 output


def test_compiled_triton_layer_matches_eager():
    q = _layer("int8", "token")
    q.backend = "triton"
    x = torch.randn(512, 320, device="cuda", dtype=torch.bfloat16)
    eager = q(x)
    compiled = torch.compile(q)(x)
    rel = ((compiled.float() - eager.float()).norm() / eager.float().norm()).item()
    assert rel < 1e-2, rel


def test_reference_helper_shapes():
    q = _layer("int8", "token")
    x = torch.randn(64, 320, device="cuda")
    from fewstep.core.quant.qtensor import quantize_int, token_scale

    r = token_scale(x, 8)
    out = run_matmul(q, x, quantize_int(x, r, 8), r)
    assert out.shape == (64, 384)
    assert torch.allclose(out, reference(q, x, quantize_int(x, r, 8), r) + q.bias, rtol=1e-4, atol=1e-3)
