"""Synthesize: unconditional TSDiff samples and the linear predictive score (Kollovieh et al. 2023, Sec. 4.3).

The linear predictive score (LPS) trains a ridge-regularised linear forecaster (context ->
prediction, on mean-scaled windows) on synthetic samples only and reports its CRPS on the real
test set with gluonts' Evaluator: synthetic data good enough to train a forecaster scores close
to a forecaster trained on real windows (the same linear model fit on real training windows is
reported beside it).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from fewstep.core.denoiser import Denoiser
from fewstep.core.solvers import sample
from gluonts.dataset.common import Dataset
from gluonts.dataset.loader import InferenceDataLoader
from gluonts.model.forecast import Forecast, SampleForecast
from gluonts.model.predictor import Predictor
from gluonts.torch.batchify import batchify

from .config import TSDiffConfig
from .data import SeriesData
from .evaluate import evaluate, metrics_only
from .features import PAST_OBSERVED, splitter, training_windows, transformation, window
from .model import tsdiff_config


@torch.no_grad()
def synthesize(den: Denoiser, n: int, solver: str = "ddpm", num_steps: int | None = None, grid: str = "uniform",
               seed: int = 0, batch: int = 512) -> torch.Tensor:
    """``n`` unconditional windows (n, C, L) in the model's scaled units; channel 0 is the target."""
    gen = torch.Generator().manual_seed(seed)
    steps = num_steps or den.card.student_steps or 100
    out = []
    for i in range(0, n, batch):
        noise = torch.randn((min(batch, n - i), *den.sample_shape), generator=gen)
        out.append(sample(den, noise, solver=solver, num_steps=steps, grid=grid if solver != "auto" else None,
                          generator=gen, denoise_to_zero=True))
    return torch.cat(out)


def fit_linear(windows: torch.Tensor, cfg: TSDiffConfig, ridge: float = 1e-2) -> np.ndarray:
    """Ridge regression [context, 1] -> prediction on scaled target windows (N, L): weights (C_len + 1, P)."""
    y = windows.double().numpy()
    X = np.concatenate([y[:, : cfg.context_length], np.ones((len(y), 1))], 1)
    Y = y[:, cfg.context_length :]
    A = X.T @ X + ridge * len(y) * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ Y)


class LinearPredictor(Predictor):
    """A linear forecaster on mean-scaled context windows (one point forecast, as a 1-sample SampleForecast)."""

    def __init__(self, weights: np.ndarray, cfg: TSDiffConfig):
        super().__init__(prediction_length=cfg.prediction_length)
        self.weights, self.cfg = weights, cfg

    def predict(self, dataset: Dataset, num_samples: int | None = None, **kwargs) -> Iterator[Forecast]:
        cfg = self.cfg
        loader = InferenceDataLoader(dataset, transform=transformation(cfg) + splitter(cfg, "test"), batch_size=64,
                                     stack_fn=batchify)
        for batch in loader:
            w = window(cfg, batch["past_target"], batch[PAST_OBSERVED])
            ctx = w.x[:, 0, : cfg.context_length].double().numpy()
            pred = np.concatenate([ctx, np.ones((len(ctx), 1))], 1) @ self.weights  # (B, P)
            out = w.unscale(torch.from_numpy(pred).float()).numpy()
            for row, fs in zip(out, batch["forecast_start"]):
                yield SampleForecast(samples=row[None], start_date=fs, item_id=None)


def linear_predictive_score(den: Denoiser, data: SeriesData, n: int = 1000, solver: str = "ddpm",
                            num_steps: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """LPS: CRPS on real test data of a linear model fit to ``n`` synthetic windows, beside one fit to real windows."""
    cfg = tsdiff_config(den)
    synthetic = synthesize(den, n, solver=solver, num_steps=num_steps, seed=seed)[:, 0]
    real, _ = training_windows(cfg, data.train, n, seed)
    syn = metrics_only(evaluate(LinearPredictor(fit_linear(synthetic, cfg), cfg), data, 1, progress, "lps"))
    ref = metrics_only(evaluate(LinearPredictor(fit_linear(real[:, 0], cfg), cfg), data, 1, progress, "lps-real"))
    return {"synthetic": syn, "real": ref}
