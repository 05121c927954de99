"""Bad input raises errors that say what to do: short series, NaNs, wrong frequencies, bad CSVs, CLI."""

import numpy as np
import pandas as pd
import pytest
from fewstep.timeseries import TSDiffConfig, from_csv
from fewstep.timeseries.data import split
from fewstep.timeseries.features import check_training_data, training_windows


def _series(n, nan_at=None):
    v = np.sin(np.arange(n) / 3.0) + 5
    if nan_at is not None:
        v[nan_at] = np.nan
    return [("a", pd.Period("2020-01-01", freq="D"), v)]


def test_wrong_frequency_string():
    with pytest.raises(ValueError, match="not a pandas frequency string.*'D' \\(daily\\)"):
        TSDiffConfig(freq="daily", prediction_length=7, context_length=14)
    with pytest.raises(ValueError, match="frequency 'fortnight'"):
        split(_series(50), "fortnight", 7, 1, "x")


def test_nan_in_series_says_how_to_fill():
    with pytest.raises(ValueError, match=r"1 missing or infinite values \(first at positions \[10\]\).*interpolate"):
        split(_series(50, nan_at=10), "D", 7, 1, "x")


def test_series_too_short_to_hold_out():
    with pytest.raises(ValueError, match="too short to hold out 3 window.*lower --prediction-length"):
        split(_series(20), "D", 7, 3, "x")


def test_series_too_short_for_the_window():
    data = split(_series(60), "D", 7, 1, "x")
    cfg = TSDiffConfig(freq="D", prediction_length=7, context_length=40, lags=(14,))
    with pytest.raises(ValueError, match=r"longest has 53 values but .* = 61 are needed; lower --context-length"):
        check_training_data(cfg, data.train)
    with pytest.raises(ValueError, match="shorter than one window"):
        training_windows(cfg, data.train, 8)


def test_bad_config_values():
    with pytest.raises(ValueError, match="lags"):
        TSDiffConfig(freq="D", prediction_length=7, context_length=14, lags=(0,))
    with pytest.raises(ValueError, match="scaling"):
        TSDiffConfig(freq="D", prediction_length=7, context_length=14, scaling="minmax")


def test_csv_errors(tmp_path):
    ok = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=40, freq="D"), "y": np.arange(40.0)})
    path = tmp_path / "ok.csv"
    ok.to_csv(path, index=False)
    data = from_csv(path, "D", 5, windows=2)
    assert len(data.train) == 1 and len(data.test) == 2 and len(data.train[0]["target"]) == 30
    with pytest.raises(ValueError, match="not regular at frequency 'h'.*pass the data's real --freq"):
        from_csv(path, "h", 5)
    bad = ok.copy()
    bad.loc[3, "y"] = np.nan
    bad.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(ValueError, match="missing or infinite"):
        from_csv(tmp_path / "nan.csv", "D", 5)
    with pytest.raises(FileNotFoundError, match="no such CSV"):
        from_csv(tmp_path / "missing.csv", "D", 5)


def test_cli_prints_one_clear_line(tmp_path):
    from fewstep.timeseries.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--csv", str(tmp_path / "x.csv")])
    assert res.exit_code == 2
    assert "--csv needs --freq" in res.output
