"""Observation self-guidance turns the unconditional model into a forecaster (real effects, fixed seeds)."""

import numpy as np
import pytest
import torch
from fewstep.timeseries import GuidanceConfig, guided_sample, tsdiff_config, tsdiff_predictor
from fewstep.timeseries.features import training_windows
from gluonts.model.forecast import SampleForecast


@pytest.fixture(scope="module")
def windows(shipped, seasonal):
    cfg = tsdiff_config(shipped)
    x, _ = training_windows(cfg, seasonal.test, 6, seed=5)  # held-out windows, truth included
    mask = torch.ones_like(x)
    mask[:, 0, cfg.context_length :] = 0  # the forecast is unobserved; lag 24 of it is context
    return cfg, x, mask


def _future_error(out, x, c):
    return float((out[:, :, 0, c:].median(1).values - x[:, 0, c:]).abs().mean())


@pytest.mark.parametrize("solver,steps,grid,energy", [("ddpm", 50, "uniform", "quantile"), ("ddim", 50, "uniform", "mse")])
def test_guidance_beats_unguided_samples(shipped, windows, solver, steps, grid, energy):
    cfg, x, mask = windows
    # The squared-error gradient grows with the residual, so it takes a smaller scale.
    scale, bound = (4.0, 0.5) if energy == "quantile" else (0.3, 0.8)
    errs = {}
    for s in (0.0, scale):
        g = GuidanceConfig(energy=energy, scale=s, solver=solver, num_steps=steps, grid=grid)
        out = guided_sample(shipped, x * mask, mask, 8, g, generator=torch.Generator().manual_seed(0))
        errs[s] = _future_error(out, x, cfg.context_length)
    assert errs[scale] < bound * errs[0.0], errs


def test_predictor_yields_sample_forecasts(shipped, seasonal):
    pred = tsdiff_predictor(shipped, GuidanceConfig(solver="dpmpp_2m", num_steps=10, grid="logsnr", scale=1.0), num_samples=4)
    entries = list(seasonal.test)[:2]
    forecasts = list(pred.predict([{**e, "target": e["target"][:-24]} for e in entries]))
    assert len(forecasts) == 2 and all(isinstance(f, SampleForecast) for f in forecasts)
    f = forecasts[0]
    assert f.samples.shape == (4, 24) and np.isfinite(f.samples).all()
    assert f.start_date == entries[0]["start"] + len(entries[0]["target"]) - 24
    # In data units: the level of the series, not the scaled ~1.
    assert abs(f.mean.mean() - entries[0]["target"][-24:].mean()) < 0.3 * abs(entries[0]["target"].mean())
