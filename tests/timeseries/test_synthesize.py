"""Synthesize: unconditional samples keep the data's season; the linear predictive score works on them."""

import torch
from fewstep.timeseries import tsdiff_config
from fewstep.timeseries.features import training_windows
from fewstep.timeseries.synthesize import linear_predictive_score, synthesize


def _autocorr(v, lag):
    v = v - v.mean(-1, keepdim=True)
    return float((v[:, lag:] * v[:, :-lag]).mean() / v.pow(2).mean())


def test_unconditional_samples_are_seasonal(shipped, seasonal):
    syn = synthesize(shipped, 48, solver="ddim", num_steps=20, seed=0)[:, 0]
    real, _ = training_windows(tsdiff_config(shipped), seasonal.train, 48)
    assert syn.shape == (48, 72) and torch.isfinite(syn).all()
    # Daily period: in phase a day apart, out of phase half a day apart, like the real windows.
    for v in (syn, real[:, 0]):
        assert _autocorr(v, 24) > 0.3 and _autocorr(v, 12) < -0.3


def test_linear_predictive_score(shipped, seasonal):
    lps = linear_predictive_score(shipped, seasonal, n=256, solver="ddim", num_steps=20)
    syn, real = lps["synthetic"]["CRPS"], lps["real"]["CRPS"]
    assert 0 < real and 0 < syn < 2 * real, lps
