"""NaN/inf never comes back from sample(): bad noise is refused, a non-finite prediction fails the
solve and names the network evaluation that produced it."""

import pytest
import torch

from fewstep.core.solvers import sample

from ..tiny import tiny_denoiser


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_noise_is_refused(bad):
    x = torch.randn(2, 1, 4, 4)
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        sample(tiny_denoiser(), x, "ddim", 4)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun"])
def test_a_nan_prediction_names_the_evaluation(solver):
    den = tiny_denoiser()
    forward, calls = den.net.forward, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = forward(*args, **kwargs)
        return out * float("nan") if len(calls) == 3 else out

    den.net.forward = poisoned
    with pytest.raises(FloatingPointError, match=rf"{solver}: the model's prediction is first NaN/inf at network evaluation 3 \(t="):
        sample(den, torch.randn(2, 1, 4, 4), solver, 6, cond=torch.tensor([0, 1]))
