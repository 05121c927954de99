"""Offline time-series data as gluonts datasets: artificial series, statsmodels series, CSV files.

Every source becomes a :class:`SeriesData`: a ``train`` dataset (each series cut before its test
windows) and a ``test`` dataset of ``windows`` rolling entries per series, entry k ending
``(windows - 1 - k) * prediction_length`` steps before the end (gluonts' convention: the last
``prediction_length`` values of a test entry are what gets forecast). Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from gluonts.dataset.common import ListDataset

ARTIFICIAL = ("complex_seasonal", "seasonal")
STATSMODELS = ("sunspots", "co2", "elnino", "nile")


@dataclass(frozen=True)
class SeriesData:
    """A named set of series with its frequency, horizon and train/test split (gluonts datasets)."""

    name: str
    freq: str
    prediction_length: int
    windows: int
    train: ListDataset
    test: ListDataset

    @property
    def min_length(self) -> int:
        return min(len(e["target"]) for e in self.train)


def check_freq(freq: str) -> str:
    """A pandas frequency string gluonts understands, or a ValueError that lists valid ones."""
    from gluonts.time_feature import get_seasonality

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pd.tseries.frequencies.to_offset(freq)
            pd.Period("2000-01-01", freq=freq)
            get_seasonality(freq)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"frequency {freq!r} is not a pandas frequency string ({e}); use e.g. 'h' (hourly), 'D' (daily), "
            f"'W' (weekly), 'M' (monthly), 'Q' (quarterly) or 'Y' (yearly), optionally with a multiple such as '15min'"
        ) from None
    return freq


def check_series(values: np.ndarray, name: str) -> np.ndarray:
    """A finite 1-D float32 array, or a ValueError that says what to do."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"series {name!r} must be 1-D, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        where = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"series {name!r} has {int(bad.sum())} missing or infinite values (first at positions {where}); "
            f"fill them before forecasting, e.g. pandas' df.interpolate() or df.ffill(), or drop those rows"
        )
    return v.astype(np.float32)


def split(
    series: list[tuple[str, pd.Period, np.ndarray]], freq: str, prediction_length: int, windows: int, name: str,
    min_train: int = 1,
) -> SeriesData:
    """Rolling-origin split: the last ``windows * prediction_length`` values of each series are held out."""
    check_freq(freq)
    if prediction_length < 1 or windows < 1:
        raise ValueError(f"prediction_length={prediction_length} and windows={windows} must both be >= 1")
    train, test = [], []
    for item, start, target in series:
        target = check_series(target, item)
        held = windows * prediction_length
        if len(target) - held < min_train:
            raise ValueError(
                f"series {item!r} has {len(target)} values: too short to hold out {windows} window(s) of "
                f"{prediction_length} and keep {min_train} for training; lower --prediction-length or --windows, "
                f"or bring a longer series"
            )
        train.append({"start": start, "target": target[: len(target) - held], "item_id": item})
        for k in range(windows):
            end = len(target) - (windows - 1 - k) * prediction_length
            test.append({"start": start, "target": target[:end], "item_id": item})
    return SeriesData(name, freq, prediction_length, windows, ListDataset(train, freq=freq), ListDataset(test, freq=freq))


# -- sources ------------------------------------------------------------------------------------------
def artificial(
    name: str = "complex_seasonal", prediction_length: int = 24, windows: int = 2, num_series: int = 8,
    length: int = 400, seed: int = 1,
) -> SeriesData:
    """gluonts' artificial series: ``complex_seasonal`` (ComplexSeasonalTimeSeries, hourly, daily
    period, weekday effect, noise) or ``seasonal`` (a gluonts recipe: level + daily sine + noise)."""
    if name == "complex_seasonal":
        from gluonts.dataset.artificial import ComplexSeasonalTimeSeries

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            gen = ComplexSeasonalTimeSeries(
                num_series=num_series, prediction_length=prediction_length, freq_str="H", length_low=length,
                length_high=length + 1, min_val=0.0, max_val=100.0, is_noise=True, is_scale=True,
                percentage_unique_timestamps=0.0, proportion_missing_values=0.0,
            )
            entries = gen.make_timeseries(seed=seed)
        # Drop the sigmoid warm-up envelope at the start of each series (it is no pattern to learn).
        series = [(f"{name}-{i}", pd.Period(str(e["start"]), freq="h") + 48, np.asarray(e["target"])[48:])
                  for i, e in enumerate(entries)]
        return split(series, "h", prediction_length, windows, name)
    if name == "seasonal":
        from gluonts.dataset.artificial import recipe as rcp

        period = 24
        target = rcp.Add([
            rcp.ConstantVec(rcp.RandomUniform(5.0, 15.0, shape=(1,))),
            rcp.SmoothSeasonality(period=period, phase=rcp.RandomUniform(0.0, 1.0 * period, shape=(1,)))
            * rcp.RandomUniform(2.0, 4.0, shape=(1,)),
            rcp.RandomGaussian(0.3),
        ])
        np.random.seed(seed)
        series = []
        for i in range(num_series):
            values = rcp.evaluate(target, length)
            series.append((f"{name}-{i}", pd.Period("2020-01-01 00:00", freq="h"), np.asarray(values, dtype=float)))
        return split(series, "h", prediction_length, windows, name)
    raise ValueError(f"unknown artificial dataset {name!r}; use one of {ARTIFICIAL}")


def statsmodels_series(name: str, prediction_length: int | None = None, windows: int = 3) -> SeriesData:
    """A real series that ships with statsmodels (no download), as one gluonts series.

    ``sunspots``: yearly sunspot numbers 1700-2008; ``co2``: Mauna Loa CO2, weekly readings averaged
    to months (gaps interpolated); ``elnino``: monthly sea-surface temperature 1950-2010; ``nile``:
    yearly Nile flow 1871-1970.
    """
    import statsmodels.api as sm

    if name == "sunspots":
        d = sm.datasets.sunspots.load_pandas().data
        values, freq, start, horizon = d["SUNACTIVITY"].to_numpy(), "Y", pd.Period("1700", freq="Y"), 11
    elif name == "co2":
        s = sm.datasets.co2.load_pandas().data["co2"].resample("MS").mean().interpolate()
        values, freq, start, horizon = s.to_numpy(), "M", pd.Period(s.index[0], freq="M"), 12
    elif name == "elnino":
        d = sm.datasets.elnino.load_pandas().data
        values, freq, start, horizon = d.iloc[:, 1:].to_numpy().reshape(-1), "M", pd.Period("1950-01", freq="M"), 12
    elif name == "nile":
        d = sm.datasets.nile.load_pandas().data
        values, freq, start, horizon = d["volume"].to_numpy(), "Y", pd.Period("1871", freq="Y"), 5
    else:
        raise ValueError(f"unknown statsmodels series {name!r}; use one of {STATSMODELS}")
    return split([(name, start, values)], freq, prediction_length or horizon, windows, name)


def from_csv(
    path: str | Path, freq: str, prediction_length: int, windows: int = 1, timestamp_column: str | None = None,
) -> SeriesData:
    """A CSV with a timestamp column and one or more value columns (one series per value column)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    check_freq(freq)
    df = pd.read_csv(path)
    if df.shape[1] < 2:
        raise ValueError(f"{path}: need a timestamp column and at least one value column, got columns {list(df.columns)}")
    ts_col = timestamp_column or df.columns[0]
    if ts_col not in df.columns:
        raise ValueError(f"{path}: no column {ts_col!r}; columns are {list(df.columns)}")
    try:
        stamps = pd.to_datetime(df[ts_col])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: column {ts_col!r} does not hold timestamps ({e}); pass --timestamp-column") from None
    values = df.drop(columns=[ts_col])
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise ValueError(f"{path}: value columns {non_numeric} are not numeric; keep only numbers besides {ts_col!r}")
    expected = pd.period_range(pd.Period(stamps.iloc[0], freq=freq), periods=len(stamps), freq=freq)
    got = stamps.dt.to_period(freq)
    if not (got.to_numpy() == expected.to_numpy()).all():
        first = int(np.flatnonzero(got.to_numpy() != expected.to_numpy())[0])
        raise ValueError(
            f"{path}: timestamps are not regular at frequency {freq!r} (row {first}: {stamps.iloc[first]} but "
            f"{expected[first]} was expected); pass the data's real --freq, or resample the data to one row per period"
        )
    series = [(str(c), expected[0], values[c].to_numpy()) for c in values.columns]
    return split(series, freq, prediction_length, windows, path.stem)


def load(name: str, prediction_length: int | None = None, windows: int | None = None) -> SeriesData:
    """Any built-in source by name: one of ARTIFICIAL or STATSMODELS."""
    if name in ARTIFICIAL:
        return artificial(name, prediction_length or 24, windows or 2)
    if name in STATSMODELS:
        return statsmodels_series(name, prediction_length, windows or 3)
    raise ValueError(f"unknown dataset {name!r}; built-in ones are {ARTIFICIAL + STATSMODELS}, or pass --csv FILE")
