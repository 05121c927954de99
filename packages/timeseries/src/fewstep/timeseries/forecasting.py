"""Forecast beyond the end of the data (what ``fewstep-ts forecast`` prints, plots and saves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from fewstep.core.denoiser import Denoiser
from fewstep.core.io import write_text_atomic
from gluonts.dataset.common import ListDataset

from .data import SeriesData
from .guidance import GuidanceConfig
from .model import tsdiff_config
from .predictor import tsdiff_predictor

QUANTILE_COLUMNS = (0.1, 0.5, 0.9)


def forecast_future(den: Denoiser, data: SeriesData, guidance: GuidanceConfig, num_samples: int = 100,
                    plot: Path | None = None, out_csv: Path | None = None) -> str:
    """Forecast ``prediction_length`` steps after each full series; returns a printable table."""
    cfg = tsdiff_config(den)
    full = ListDataset([{**e, "target": np.asarray(t["target"])} for e, t in zip(data.train, _last_entries(data))],
                       freq=data.freq)
    for e in full:
        if len(e["target"]) < cfg.past_length:
            raise ValueError(f"series {e.get('item_id')!r} has {len(e['target'])} values; this model needs at least "
                             f"{cfg.past_length} (context {cfg.context_length} + deepest lag {cfg.max_lag})")
    forecasts = list(tsdiff_predictor(den, guidance, num_samples).predict(full))
    rows = []
    for e, f in zip(full, forecasts):
        idx = pd.period_range(f.start_date, periods=cfg.prediction_length, freq=data.freq)
        qs = {f"q{int(q * 100)}": f.quantile(q) for q in QUANTILE_COLUMNS}
        rows.append(pd.DataFrame({"item_id": e.get("item_id"), "timestamp": idx.astype(str), **qs}))
    table = pd.concat(rows, ignore_index=True)
    if out_csv is not None:
        write_text_atomic(out_csv, table.to_csv(index=False))  # a reader never sees half a file
    if plot is not None:
        from .plot import plot_forecasts

        panels = [(str(e.get("item_id")), e["target"], f.samples, None) for e, f in list(zip(full, forecasts))[:4]]
        plot_forecasts(panels, 3 * cfg.prediction_length, plot, "TSDiff forecast (observation self-guidance)")
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _last_entries(data: SeriesData):
    """The full series: the last test entry of each item."""
    last = {}
    for e in data.test:
        last[e.get("item_id")] = e
    return [last[e.get("item_id")] for e in data.train]
