import pytest
import torch
from torch import nn

from fewstep.core.denoiser import PREDICTIONS, Denoiser, convert, to_x0_eps
from fewstep.core.schedules import EDM, RectifiedFlow, VPDiscrete


class Affine(nn.Module):
    """A tiny 'network' whose output depends on x, t and the class label."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, 1)
        nn.init.normal_(self.emb.weight)

    def forward(self, x, t, cond=None):
        out = 0.5 * x + 1e-3 * t.view(-1, 1, 1, 1)
        if cond is None:  # unconditional == the null label, as in fewstep's nets
            cond = torch.full((x.shape[0],), self.num_classes)
        return out + self.emb(cond).view(-1, 1, 1, 1)


@pytest.mark.parametrize("src", PREDICTIONS)
@pytest.mark.parametrize("dst", PREDICTIONS)
@pytest.mark.parametrize("sched", [VPDiscrete(), EDM(), RectifiedFlow()], ids=["vp", "edm", "flow"])
def test_conversions_round_trip(src, dst, sched):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64) * (sched.t_max - sched.t_min) * 0.9 + sched.t_min * 2
    a, s = sched.alpha(t), sched.sigma(t)
    x = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
    from fewstep.core.denoiser import from_x0_eps

    p = from_x0_eps(x0, eps, src, a, s)
    q = convert(p, src, dst, x, a, s)
    back = convert(q, dst, src, x, a, s)
    assert torch.allclose(back, p, atol=1e-8)
    rx0, reps = to_x0_eps(q, dst, x, a, s)
    assert torch.allclose(rx0, x0, atol=1e-7) and torch.allclose(reps, eps, atol=1e-7)


def test_guidance_formula_and_counters():
    net = Affine()
    den = Denoiser(net, VPDiscrete(), "eps", sample_shape=(1, 2, 2), num_classes=3).eval()
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    t = torch.full((5,), 0.5)
    c = den.predict(x, t, y, kind="eps")
    u = den.predict(x, t, None, kind="eps")
    g = den.predict(x, t, y, guidance=3.0, kind="eps")
    assert torch.allclose(g, u + 3.0 * (c - u), atol=1e-6)
    assert den.nfe == 3 and den.net_evals == 4
    # The null label is the unconditional branch.
    assert torch.allclose(den.predict(x, t, torch.full((5,), 3), kind="eps"), net(x, den.schedule.net_time(t.double()).float(), torch.full((5,), 3)))
    den.reset_counters()
    assert den.nfe == 0 and den.net_evals == 0


def test_bad_inputs_have_clear_errors():
    den = Denoiser(Affine(), VPDiscrete(), "eps", sample_shape=(1, 2, 2), num_classes=3)
    with pytest.raises(ValueError, match=r"takes \(B, 1, 2, 2\)"):
        den(torch.randn(2, 3, 2, 2), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        den(torch.ones(2, 1, 2, 2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        den(torch.randn(2, 1, 2, 2), torch.rand(3))
    with pytest.raises(ValueError, match="unknown prediction type"):
        Denoiser(Affine(), VPDiscrete(), "score")
    with pytest.raises(TypeError, match="ModelCard"):
        Denoiser(Affine(), VPDiscrete(), "eps", card={"student_steps": 2})
    with pytest.raises(TypeError, match="Boundary"):
        Denoiser(Affine(), VPDiscrete(), "eps", boundary={"sigma_data": 0.5, "timestep_scaling": 10.0})
    with pytest.raises(TypeError, match="Schedule"):
        Denoiser(Affine(), {"kind": "vp"}, "eps")


def test_raw_and_training_mode_never_apply_cfg():
    net = Affine()
    den = Denoiser(net, VPDiscrete(), "eps", sample_shape=(1, 2, 2), num_classes=3, guidance=3.0)
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    t = torch.full((5,), 0.5)
    cond_only = net(x, den.schedule.net_time(t.double()).float(), y)
    # raw: one unguided evaluation, in any mode, whatever the default scale.
    assert torch.allclose(den.eval().raw(x, t.double(), y), cond_only) and den.net_evals == 1
    # Training mode: the model's default scale is not applied, and asking for CFG is an error.
    den.train()
    assert torch.allclose(den.predict(x, t, y, kind="eps"), cond_only)
    with pytest.raises(RuntimeError, match="training mode"):
        den.predict(x, t, y, guidance=2.0)
    # Sampling mode applies the default scale: two network evaluations per call.
    den.eval().reset_counters()
    g = den.predict(x, t, y, kind="eps")
    assert not torch.allclose(g, cond_only) and den.net_evals == 2
