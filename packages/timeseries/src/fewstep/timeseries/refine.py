"""Refine any gluonts forecast with TSDiff's implicit density (Kollovieh et al. 2023, Sec. 4.2).

The diffusion model defines an energy on a whole window x = (context, forecast):
E_theta(x) = ||eps_theta(alpha_t x + sigma_t eps, t) - eps||^2 at a fixed diffusion time t (Eq. 10,
the denoising term of the ELBO, so low energy = likely under the model). A base forecast y_0 is
refined against E_theta(x) + w R(y, y_0), where R is the quantile loss (sample j of the base
forecast, sorted per step, is the (j+1)/(S+1) quantile) or the squared error to y_0 (Eq. 11):

- ``method="ml"``: most-likely refinement, gradient descent on the energy (Eq. 12);
- ``method="langevin"``: overdamped Langevin MCMC, y <- y - eta grad E + sqrt(2 eta) gamma xi (Eq. 13).

Only the forecast is free: the context stays at its observed values and the lag channels are
rebuilt from (history, y) at every step, so the window the model scores is always consistent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from fewstep.core.denoiser import Denoiser
from fewstep.core.updates import noise_to
from gluonts.dataset.common import Dataset
from gluonts.dataset.loader import InferenceDataLoader
from gluonts.model.forecast import Forecast, SampleForecast
from gluonts.model.predictor import Predictor
from gluonts.torch.batchify import batchify
from torch import Tensor

from .features import FUTURE_TIME, PAST_OBSERVED, PAST_TIME, splitter, stack_lags, transformation, window
from .guidance import energy, sample_quantiles
from .model import tsdiff_config

METHODS = ("ml", "langevin")


@dataclass(frozen=True)
class RefineConfig:
    """Refinement settings: method, iterations, step size, diffusion time (fraction of T), prior weight."""

    method: str = "ml"
    iterations: int = 20
    step_size: float = 0.1
    t_frac: float = 0.2  # fixed diffusion time t = t_min + t_frac (t_max - t_min); TSDiff uses step 20 of 100
    prior: str = "quantile"
    prior_weight: float = 1.0
    noise_scale: float = 0.1  # Langevin only: gamma, the scale of the injected noise
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"refine method {self.method!r}; use one of {METHODS}")
        if self.prior not in ("quantile", "mse"):
            raise ValueError(f"prior={self.prior!r}; use 'quantile' or 'mse'")
        if self.iterations < 1 or not (self.step_size > 0 and math.isfinite(self.step_size)) or not 0 < self.t_frac <= 1 \
                or not (self.prior_weight >= 0 and math.isfinite(self.prior_weight)):
            raise ValueError("need iterations >= 1, step_size > 0, 0 < t_frac <= 1 and prior_weight >= 0")


def model_energy(den: Denoiser, x: Tensor, t: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
    """Denoising energy ||eps_theta(x_t, t) - eps||^2 summed over the window (TSDiff Eq. 10)."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    pred = den(noise_to(den.schedule, x, t, eps), t, cond, kind="eps")
    return (pred - eps).pow(2).sum()


def refine_window(den: Denoiser, prior: Tensor, context: Tensor, y0: Tensor, config: RefineConfig,
                  cond: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Refine scaled forecasts y0 (N, P) given scaled history ``prior`` (N, max_lag) and ``context`` (N, C_len).

    Rows of ``y0`` for one series are its S samples sorted per step (quantile prior). Returns (N, P).
    """
    cfg = tsdiff_config(den)
    gen = generator or torch.Generator().manual_seed(config.seed)
    n = y0.shape[0]
    s = n // context.shape[0] if context.shape[0] != n else 1
    t = torch.tensor(den.schedule.t_min + config.t_frac * (den.schedule.t_max - den.schedule.t_min), dtype=torch.float64)
    q = sample_quantiles(n // s, s) if config.prior == "quantile" else None
    y = y0.detach().clone()
    eta = config.step_size
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("the base forecast to refine holds NaN/inf (after scaling): check the base predictor and the data")
    for it in range(config.iterations):
        with torch.enable_grad():
            y.requires_grad_(True)
            x = stack_lags(cfg, prior, torch.cat([context, y], 1))
            e = model_energy(den, x, t, cond, gen)
            e = e + config.prior_weight * energy(y, y0, torch.ones_like(y0), config.prior, q)
            (grad,) = torch.autograd.grad(e, y)
        y = y.detach() - eta * grad  # most-likely step (Eq. 12)
        if config.method == "langevin":
            xi = torch.randn(y.shape, generator=gen, dtype=y.dtype)
            y = y + (2 * eta) ** 0.5 * config.noise_scale * xi  # Langevin noise (Eq. 13)
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(
                f"refinement diverged: the forecast became NaN/inf at iteration {it + 1} of {config.iterations} "
                f"({config.method}, step size {eta:g}); lower --step-size"
            )
    return y.detach()


class RefinedPredictor(Predictor):
    """Wraps any gluonts Predictor: its forecasts, refined by a TSDiff model, as SampleForecasts."""

    def __init__(self, base: Predictor, den: Denoiser, config: RefineConfig | None = None, num_samples: int = 100,
                 batch_size: int = 16):
        cfg = tsdiff_config(den)
        if base.prediction_length != cfg.prediction_length:
            raise ValueError(
                f"the base predictor forecasts {base.prediction_length} steps but the TSDiff model was trained for "
                f"{cfg.prediction_length}; use a model trained with the same --prediction-length"
            )
        super().__init__(prediction_length=cfg.prediction_length)
        self.base, self.den, self.cfg = base, den.eval(), cfg
        self.config = config or RefineConfig()
        self.num_samples, self.batch_size = num_samples, batch_size

    def predict(self, dataset: Dataset, num_samples: int | None = None, **kwargs) -> Iterator[Forecast]:
        s = num_samples or self.num_samples
        base_forecasts = iter(self.base.predict(dataset, num_samples=s))
        loader = InferenceDataLoader(dataset, transform=transformation(self.cfg) + splitter(self.cfg, "test"),
                                     batch_size=self.batch_size, stack_fn=batchify)
        gen = torch.Generator().manual_seed(self.config.seed)
        cfg = self.cfg
        for batch in loader:
            b = batch["past_target"].shape[0]
            forecasts = [next(base_forecasts) for _ in range(b)]
            w = window(cfg, batch["past_target"], batch[PAST_OBSERVED], None, batch.get(PAST_TIME), batch.get(FUTURE_TIME))
            init = np.stack([_samples(f, s) for f in forecasts])  # (B, S, P), sorted per step
            y0 = (torch.from_numpy(init).float() - w.loc[:, :, None]) / w.scale[:, :, None]
            ctx = w.x[:, 0, : cfg.context_length]
            rep = lambda v: None if v is None else v.repeat_interleave(s, 0)  # noqa: E731
            y = refine_window(self.den, rep(w.prior), rep(ctx), y0.reshape(b * s, -1), self.config, rep(w.cond), gen)
            out = w.unscale(y.reshape(b, s, -1)).numpy()
            for f, samples in zip(forecasts, out):
                yield SampleForecast(samples=samples, start_date=f.start_date, item_id=f.item_id, info={"refined": True})


def _samples(forecast: Forecast, s: int) -> np.ndarray:
    """(S, P) sample paths of a forecast, sorted per step: tiled if it has one sample (SeasonalNaive),
    read off its quantiles if it has no samples (a distribution or quantile forecast)."""
    if isinstance(forecast, SampleForecast):
        x = forecast.samples
        x = np.tile(x, (s // x.shape[0] + 1, 1))[:s] if x.shape[0] < s else x[:s]
    else:
        x = np.stack([forecast.quantile((j + 1) / (s + 1)) for j in range(s)])
    return np.sort(x, axis=0).astype(np.float32)
