"""Refinement with the model's implicit density lowers the CRPS of a SeasonalNaive forecast (gluonts Evaluator)."""

import pytest
from fewstep.timeseries import RefineConfig, RefinedPredictor
from fewstep.timeseries.data import SeriesData
from fewstep.timeseries.evaluate import evaluate, seasonal_naive
from gluonts.dataset.common import ListDataset


@pytest.fixture(scope="module")
def small(seasonal):
    """Four of the held-out test windows."""
    test = ListDataset(list(seasonal.test)[:4], freq=seasonal.freq)
    return SeriesData(seasonal.name, seasonal.freq, seasonal.prediction_length, 1, seasonal.train, test)


@pytest.mark.parametrize("method", ["ml", "langevin"])
def test_refine_lowers_seasonal_naive_crps(shipped, small, method):
    base = seasonal_naive(small)
    before = evaluate(base, small, 8, progress=False)["CRPS"]
    refined = evaluate(RefinedPredictor(base, shipped, RefineConfig(method=method), num_samples=8), small, 8,
                       progress=False)
    assert refined["CRPS"] < 0.9 * before, (refined["CRPS"], before)
    assert all(f.info == {"refined": True} for f in refined["forecasts"])


def test_refine_rejects_a_mismatched_horizon(shipped, seasonal):
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor

    with pytest.raises(ValueError, match="forecasts 12 steps but the TSDiff model was trained for 24"):
        RefinedPredictor(SeasonalNaivePredictor(12, season_length=24), shipped)
