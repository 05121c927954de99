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


# Values are modelled in float32, and scaling squares them (std scaling) or sums a context of them
# (mean scaling): beyond this magnitude that overflows, so such a series is refused with advice.
MAX_ABS_VALUE = 1e15


def check_series(values: np.ndarray, name: str, where: str = "positions", base: int = 0) -> np.ndarray:
    """A finite 1-D float32 array, or a ValueError that says what to do (``where``: what the
    reported indices count, from ``base``; e.g. "data rows" from 1 for a CSV)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"series {name!r} must be 1-D, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        at = (np.flatnonzero(bad)[:5] + base).tolist()
        raise ValueError(
            f"series {name!r} has {int(bad.sum())} missing or infinite values (first at {where} {at}); "
            f"fill them before forecasting, e.g. pandas' df.interpolate() or df.ffill(), or drop those rows"
        )
    big = np.abs(v) > MAX_ABS_VALUE
    if big.any():
        first = int(np.flatnonzero(big)[0])
        raise ValueError(
            f"series {name!r} has {int(big.sum())} value(s) too large to model (first at {where.rstrip('s')} {first + base}: "
            f"{v[first]:g}; the limit is +-{MAX_ABS_VALUE:g}); rescale the series (e.g. divide it by 1e6) and "
            f"multiply the forecasts back"
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
    return split([(name, start, values)], freq, horizon if prediction_length is None else prediction_length, windows, name)


CSV_EXPECTED = "a CSV text file with a header row, a timestamp column (dates such as 2024-01-31) and one or more numeric value columns"


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV as a DataFrame, or a ValueError naming the file and saying what is expected."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        raise ValueError(f"{path}: the file is empty; expected {CSV_EXPECTED}")
    if b"\x00" in head:
        raise ValueError(f"{path}: this is a binary file (it holds NUL bytes), not a CSV; expected {CSV_EXPECTED} "
                         f"(a UTF-16 text file must be saved as UTF-8 first)")
    try:
        df = pd.read_csv(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (a binary file, or text in another encoding); expected "
                         f"{CSV_EXPECTED}, saved as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: holds no columns; expected {CSV_EXPECTED}") from None
    except pd.errors.ParserError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a well-formed CSV ({detail}); expected {CSV_EXPECTED}") from None
    # A pandas index written by ``df.to_csv(path)`` (without index=False): not a series of the data.
    for c in list(df.columns):
        if str(c).startswith("Unnamed: ") and pd.api.types.is_integer_dtype(df[c]) and \
                (df[c].to_numpy() == np.arange(len(df))).all():
            df = df.drop(columns=[c])
    if len(df) == 0:
        raise ValueError(f"{path}: has a header ({', '.join(map(str, df.columns))}) but no data rows")
    return df


def _is_annual(freq: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "Y" is deprecated in favour of "YE"
        offset = pd.tseries.frequencies.to_offset(freq)
    return isinstance(offset, (pd.offsets.YearEnd, pd.offsets.YearBegin)) and offset.n == 1


def _date_columns(df: pd.DataFrame, skip: str) -> list[str]:
    """Columns other than ``skip`` whose first values read as dates (for a hint)."""
    found = []
    for c in df.columns:
        if c == skip or pd.api.types.is_numeric_dtype(df[c]):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pd.to_datetime(df[c].dropna().iloc[:5])
            found.append(str(c))
        except (ValueError, TypeError):
            pass
    return found


def _periods(path: Path, df: pd.DataFrame, ts_col: str, freq: str, given: bool) -> tuple[pd.PeriodIndex, list[str]]:
    """The rows' periods at ``freq`` and their labels (for messages), from the timestamp column.

    Dates and date-times are read as such. Numbers are never read as nanoseconds since 1970 (what
    pandas would do): whole numbers are taken as years when ``freq`` is yearly (a ``year,value``
    CSV), and refused otherwise with a message saying what to give.
    """
    col = df[ts_col]
    if pd.api.types.is_bool_dtype(col):
        raise ValueError(f"{path}: column {ts_col!r} holds true/false values, not timestamps; pass --timestamp-column")
    if pd.api.types.is_numeric_dtype(col):
        v = col.to_numpy(dtype=np.float64)
        whole = bool(np.isfinite(v).all() and (v == np.round(v)).all())
        if whole and _is_annual(freq) and ((v >= 1) & (v <= 9999)).all():
            periods = pd.PeriodIndex([pd.Period(year=int(y), freq=freq) for y in v], freq=freq)
            return periods, [str(int(y)) for y in v]
        shown = ", ".join(f"{x:g}" for x in v[:3])
        others = _date_columns(df, ts_col)
        hint = (f"pass --timestamp-column {others[0]!r} (that column holds dates; remove {ts_col!r} from the file "
                f"unless it is a series to forecast)" if others and not given
                else "give a column of dates such as 2024-01-31 or 2024-01-31 13:00 and name it with --timestamp-column")
        years = " (whole numbers are read as years only with a yearly --freq Y)" if whole else ""
        raise ValueError(
            f"{path}: the timestamp column {ts_col!r} holds numbers ({shown}, ...), not dates; fewstep-ts does not read "
            f"numbers as timestamps{years}: {hint}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pandas' "could not infer format" note
            stamps = pd.to_datetime(col)
    except (ValueError, TypeError, OverflowError) as e:
        others = _date_columns(df, ts_col)
        hint = f"pass --timestamp-column {others[0]!r}" if others and not given else "pass --timestamp-column NAME"
        raise ValueError(f"{path}: column {ts_col!r} does not hold timestamps ({e}); {hint}") from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0]) + 1
        raise ValueError(f"{path}: the timestamp column {ts_col!r} is empty at data row {row}; fill or drop that row")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Converting to PeriodArray will drop timezone information"
        periods = pd.PeriodIndex(stamps.dt.to_period(freq))
    return periods, [str(x) for x in stamps]


def from_csv(
    path: str | Path, freq: str, prediction_length: int, windows: int = 1, timestamp_column: str | None = None,
) -> SeriesData:
    """A CSV with a timestamp column and one or more value columns (one series per value column).

    The timestamp column (default: the first) holds dates or date-times, one row per ``freq``
    period; with a yearly ``freq`` it may hold the years themselves (1990, 1991, ...). Other
    numbers are refused rather than read as nanoseconds since 1970. An unnamed first column that
    is pandas' row index (``df.to_csv`` without ``index=False``) is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file" if not path.exists() else f"{path}: is not a file (a CSV file is expected)")
    check_freq(freq)
    df = _read_csv(path)
    if df.shape[1] < 2:
        raise ValueError(f"{path}: need a timestamp column and at least one value column, got columns {list(df.columns)}")
    ts_col = timestamp_column or df.columns[0]
    if ts_col not in df.columns:
        raise ValueError(f"{path}: no column {ts_col!r}; columns are {list(df.columns)}")
    periods, labels = _periods(path, df, ts_col, freq, timestamp_column is not None)
    values = df.drop(columns=[ts_col])
    for c in values.columns:
        if not pd.api.types.is_numeric_dtype(values[c]) or pd.api.types.is_bool_dtype(values[c]):
            parsed = pd.to_numeric(values[c], errors="coerce")
            bad = np.flatnonzero((parsed.isna() & values[c].notna()).to_numpy())
            at = f" (data row {int(bad[0]) + 1}: {values[c].iloc[int(bad[0])]!r})" if len(bad) else ""
            raise ValueError(
                f"{path}: value column {str(c)!r} is not numeric{at}; keep only numbers besides the timestamp column "
                f"{ts_col!r}, or name the timestamp column with --timestamp-column"
            )
    expected = pd.period_range(periods[0], periods=len(periods), freq=freq)
    mismatch = np.flatnonzero(periods.to_numpy() != expected.to_numpy())
    if len(mismatch):
        first = int(mismatch[0])
        raise ValueError(
            f"{path}: timestamps are not regular at frequency {freq!r} (data row {first + 1}: {labels[first]} but "
            f"{expected[first]} was expected); pass the data's real --freq, or resample the data to one row per period"
        )
    try:
        series = [(str(c), expected[0], check_series(values[c].to_numpy(), str(c), "data rows", base=1))
                  for c in values.columns]
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return split(series, freq, prediction_length, windows, path.stem)


def load(name: str, prediction_length: int | None = None, windows: int | None = None) -> SeriesData:
    """Any built-in source by name: one of ARTIFICIAL or STATSMODELS."""
    if name in ARTIFICIAL:
        return artificial(name, 24 if prediction_length is None else prediction_length, 2 if windows is None else windows)
    if name in STATSMODELS:
        return statsmodels_series(name, prediction_length, 3 if windows is None else windows)
    raise ValueError(f"unknown dataset {name!r}; built-in ones are {ARTIFICIAL + STATSMODELS}, or pass --csv FILE")
