"""Evaluation with gluonts' own tools, and gluonts' baselines (SeasonalNaive, DeepAR).

Metrics come from ``make_evaluation_predictions`` + ``Evaluator``: CRPS is gluonts'
``mean_wQuantileLoss`` (weighted quantile loss averaged over quantiles 0.05..0.95, the usual CRPS
approximation), ND and NRMSE as gluonts defines them.
"""

from __future__ import annotations

import tempfile
import time
import warnings

import numpy as np
from gluonts.evaluation import Evaluator, make_evaluation_predictions
from gluonts.model.predictor import Predictor
from gluonts.time_feature import get_seasonality
from tqdm.auto import tqdm

from .data import SeriesData

QUANTILES = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())


def evaluate(predictor: Predictor, data: SeriesData, num_samples: int = 100, progress: bool = True,
             desc: str = "forecast") -> dict:
    """{"CRPS", "ND", "NRMSE", "seconds", "seconds_per_forecast", "forecasts"} on ``data.test``."""
    t0 = time.perf_counter()
    forecast_it, ts_it = make_evaluation_predictions(data.test, predictor, num_samples=num_samples)
    forecasts = list(tqdm(forecast_it, total=len(data.test), desc=desc, disable=not progress, leave=False))
    seconds = time.perf_counter() - t0
    tss = list(ts_it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg, _ = Evaluator(quantiles=QUANTILES, num_workers=0)(tss, forecasts)
    return {
        "CRPS": float(agg["mean_wQuantileLoss"]), "ND": float(agg["ND"]), "NRMSE": float(agg["NRMSE"]),
        "seconds": seconds, "seconds_per_forecast": seconds / max(1, len(forecasts)),
        "forecasts": forecasts, "series": tss,
    }


def metrics_only(result: dict) -> dict:
    """The JSON-able part of an :func:`evaluate` result."""
    return {k: v for k, v in result.items() if k not in ("forecasts", "series")}


def seasonal_naive(data: SeriesData, season_length: int | None = None) -> Predictor:
    """gluonts' SeasonalNaivePredictor with the frequency's seasonality."""
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor

    return SeasonalNaivePredictor(data.prediction_length, season_length=season_length or get_seasonality(data.freq))


def deepar(
    data: SeriesData, context_length: int, *, epochs: int = 20, batches_per_epoch: int = 50, seed: int = 0
) -> Predictor:
    """gluonts.torch DeepAR trained on ``data.train`` on the CPU (quietly; gluonts' own best-epoch
    checkpoint goes to a temporary folder)."""
    import logging

    import lightning.pytorch as pl
    from gluonts.torch import DeepAREstimator

    pl.seed_everything(seed, workers=False, verbose=False)
    for name in ("lightning.pytorch", "lightning", "pytorch_lightning", "gluonts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # gluonts' default lags reach 721 steps for hourly data; keep those the training series can feed
    # (a lag longer than the history is zero padding, which wrecks DeepAR on short series).
    from gluonts.time_feature import get_lags_for_frequency

    room = max(1, data.min_length - context_length - data.prediction_length)
    lags = [lag for lag in get_lags_for_frequency(data.freq) if lag <= room] or [1]
    est = DeepAREstimator(
        freq=data.freq, prediction_length=data.prediction_length, context_length=context_length, lags_seq=lags,
        num_batches_per_epoch=batches_per_epoch, batch_size=32,
        trainer_kwargs={"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False, "logger": False,
                        "enable_model_summary": False, "default_root_dir": tempfile.mkdtemp(prefix="deepar-")},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.train(data.train)  # gluonts keeps the best epoch's weights via its own ModelCheckpoint
