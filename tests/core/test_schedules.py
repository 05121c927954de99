import math

import pytest
import torch

from fewstep.core.schedules import EDM, RectifiedFlow, VPCosine, VPDiscrete, from_diffusers, schedule_from_dict

ALL = [
    VPDiscrete("linear"),
    VPDiscrete("scaled_linear", 0.00085, 0.012),
    VPDiscrete("squaredcos_cap_v2"),
    VPCosine(),
    EDM(),
    RectifiedFlow(),
]


def _times(s, n=101):
    return torch.linspace(s.t_min, s.t_max, n, dtype=torch.float64)


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.to_dict()["kind"] + str(getattr(s, "beta_schedule", "")))
def test_lambda_definition_and_inverse(s):
    t = _times(s)
    lam = s.lambda_(t)
    assert torch.allclose(lam, torch.log(s.alpha(t) / s.sigma(t)), atol=1e-10)
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease as t grows"
    assert torch.allclose(s.inverse_lambda(lam), t, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("s", [x for x in ALL if x.is_variance_preserving], ids=str)
def test_vp_identity(s):
    t = _times(s)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-10)


def test_discrete_matches_diffusers_alphas_cumprod():
    from diffusers import DDPMScheduler

    for kind, b0, b1 in [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)]:
        ref = DDPMScheduler(beta_schedule=kind, beta_start=b0, beta_end=b1).alphas_cumprod.double()
        s = VPDiscrete(kind, b0, b1)
        n = torch.arange(1000)
        t = s.timestep_to_t(n)
        assert torch.allclose(s.alpha(t) ** 2, ref, rtol=1e-5, atol=1e-7)
        assert torch.allclose(s.t_to_timestep(t), n.double())


def test_edm_and_flow_closed_forms():
    e = EDM()
    assert float(e.sigma(3.0)) == 3.0 and float(e.alpha(3.0)) == 1.0
    f = RectifiedFlow()
    assert math.isclose(float(f.alpha(0.25)), 0.75) and math.isclose(float(f.lambda_(0.5)), 0.0, abs_tol=1e-12)


def test_from_diffusers_configs():
    from diffusers import DDIMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    s, p = from_diffusers(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"))
    assert s == VPDiscrete("scaled_linear", 0.00085, 0.012, 1000) and p == "v"
    s, p = from_diffusers({"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "prediction_type": "epsilon"})
    assert s.num_train_timesteps == 500 and p == "eps"
    s, p = from_diffusers(FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert isinstance(s, RectifiedFlow) and s.shift == 3.0 and p == "flow"
    s, p = from_diffusers(EDMEulerScheduler())
    assert isinstance(s, EDM)
    with pytest.raises(ValueError, match="prediction_type"):
        from_diffusers({"prediction_type": "banana"})


def test_schedule_dict_round_trip_and_errors():
    for s in ALL:
        assert schedule_from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedule_from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match="beta_schedule"):
        VPDiscrete("quartic")
