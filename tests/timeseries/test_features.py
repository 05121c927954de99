"""The gluonts pipeline builds the windows TSDiff sees: scaling, lag channels, observation masks."""

import numpy as np
import pandas as pd
import torch
from fewstep.timeseries import TSDiffConfig
from fewstep.timeseries.data import split
from fewstep.timeseries.features import stack_lags, training_windows, window


def test_window_scaling_lags_and_mask():
    cfg = TSDiffConfig(freq="D", prediction_length=3, context_length=4, lags=(5,))
    past = torch.arange(1.0, 10.0)[None]  # (1, 9): 5 history values before the 4-step context
    w = window(cfg, past, torch.ones_like(past))
    ctx = past[0, -4:]
    assert torch.allclose(w.scale, ctx.abs().mean().reshape(1, 1))  # mean scaling on the context only
    assert w.x.shape == (1, 2, 7) and w.mask.shape == (1, 2, 7)
    torch.testing.assert_close(w.x[0, 0, :4] * w.scale[0, 0], ctx)
    assert (w.x[0, 0, 4:] == 0).all() and (w.mask[0, 0] == torch.tensor([1, 1, 1, 1, 0, 0, 0.0])).all()
    # Lag 5 at window position i is the value 5 steps earlier: known for every position i - 5 < context end.
    full = torch.cat([past[0], torch.zeros(3)])
    torch.testing.assert_close(w.x[0, 1] * w.scale[0, 0], full[-7 - 5 : -5])
    assert (w.mask[0, 1] == 1).all()
    torch.testing.assert_close(w.unscale(w.x[:, 0, :4]), ctx[None])


def test_std_scaling_standardises_the_context():
    cfg = TSDiffConfig(freq="D", prediction_length=2, context_length=50, scaling="std")
    past = 300 + 3 * torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    w = window(cfg, past, torch.ones_like(past))
    assert abs(float(w.x[0, 0, :50].mean())) < 1e-4 and abs(float(w.x[0, 0, :50].std()) - 1) < 0.05


def test_stack_lags_is_differentiable():
    cfg = TSDiffConfig(freq="D", prediction_length=2, context_length=3, lags=(2,))
    y = torch.randn(1, 5, requires_grad=True)
    stack_lags(cfg, torch.zeros(1, 2), y).sum().backward()
    assert y.grad is not None and (y.grad[0, :3] == 2).all()  # each of those values also feeds the lag channel


def test_training_windows_come_from_full_series():
    v = np.arange(200.0) + 10
    data = split([("a", pd.Period("2020-01-01", freq="D"), v)], "D", 5, 1, "x")
    cfg = TSDiffConfig(freq="D", prediction_length=5, context_length=10, lags=(7,))
    x, cond = training_windows(cfg, data.train, 64)
    assert x.shape == (64, 2, 15) and cond is None
    # Windows of a ramp: consecutive differences are constant once unscaled, so never padded.
    d = x[:, 0, 1:] - x[:, 0, :-1]
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-4)


def test_yearly_series_and_time_features():
    v = 50 + 10 * np.sin(np.arange(120) / 2.0)
    yearly = split([("y", pd.Period("1900", freq="Y"), v)], "Y", 4, 1, "y")
    x, cond = training_windows(TSDiffConfig(freq="Y", prediction_length=4, context_length=8, lags=(11,)), yearly.train, 8)
    assert x.shape == (8, 2, 12) and cond is None  # gluonts has no calendar features for yearly data
    hourly = split([("h", pd.Period("2020-01-01 00:00", freq="h"), v)], "h", 4, 1, "h")
    cfg = TSDiffConfig(freq="h", prediction_length=4, context_length=8, time_features=True)
    x, cond = training_windows(cfg, hourly.train, 8)
    assert cond.shape == (8, 4, 12) and torch.isfinite(cond).all()  # hour, weekday, day of month, day of year
