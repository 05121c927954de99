"""gluonts data pipeline for TSDiff windows, and the (B, C, L) tensors the diffusion model sees.

Series go through gluonts' own transformations (observed-value indicator, time features,
``InstanceSplitter`` with a train or test instance sampler) and data loaders; ``window`` then
scales them with gluonts' ``MeanScaler`` / ``StdScaler`` on the context and stacks the target with
its lags (``gluonts.torch.util.lagged_sequence_values``) into channels, as in TSDiff.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from gluonts.dataset.common import Dataset
from gluonts.dataset.field_names import FieldName
from gluonts.dataset.loader import TrainDataLoader
from gluonts.itertools import Cached
from gluonts.time_feature import time_features_from_frequency_str
from gluonts.torch.batchify import batchify
from gluonts.torch.scaler import MeanScaler, StdScaler
from gluonts.torch.util import lagged_sequence_values
from gluonts.transform import (
    AddObservedValuesIndicator,
    AddTimeFeatures,
    AsNumpyArray,
    Chain,
    ExpectedNumInstanceSampler,
    InstanceSplitter,
    TestSplitSampler,
    Transformation,
)
from torch import Tensor

from .config import TSDiffConfig

PAST_TIME, FUTURE_TIME = "past_" + FieldName.FEAT_TIME, "future_" + FieldName.FEAT_TIME
PAST_OBSERVED = "past_" + FieldName.OBSERVED_VALUES


def num_time_features(cfg: TSDiffConfig) -> int:
    """Calendar features per step (gluonts' defaults for the frequency); 0 unless ``time_features``."""
    if not cfg.time_features:
        return 0
    n = len(time_features_from_frequency_str(cfg.freq))
    if n == 0:
        raise ValueError(f"gluonts has no calendar time features for frequency {cfg.freq!r}; set time_features=False")
    return n


def transformation(cfg: TSDiffConfig) -> Transformation:
    """Per-series fields: float target, observed-values mask, calendar time features."""
    steps = [
        AsNumpyArray(FieldName.TARGET, expected_ndim=1),
        AddObservedValuesIndicator(FieldName.TARGET, FieldName.OBSERVED_VALUES),
    ]
    if num_time_features(cfg):
        steps.append(AddTimeFeatures(
            FieldName.START, FieldName.TARGET, FieldName.FEAT_TIME,
            time_features_from_frequency_str(cfg.freq), pred_length=cfg.prediction_length,
        ))
    return Chain(steps)


def splitter(cfg: TSDiffConfig, mode: str) -> InstanceSplitter:
    """gluonts' InstanceSplitter: random full windows ("train") or the window at the end ("test")."""
    if mode == "train":
        sampler = ExpectedNumInstanceSampler(num_instances=1.0, min_past=cfg.past_length, min_future=cfg.prediction_length)
    elif mode == "test":
        sampler = TestSplitSampler()
    else:
        raise ValueError(f"mode={mode!r}; use 'train' or 'test'")
    return InstanceSplitter(
        target_field=FieldName.TARGET, is_pad_field=FieldName.IS_PAD, start_field=FieldName.START,
        forecast_start_field=FieldName.FORECAST_START, instance_sampler=sampler, past_length=cfg.past_length,
        future_length=cfg.prediction_length,
        time_series_fields=[FieldName.OBSERVED_VALUES] + ([FieldName.FEAT_TIME] if num_time_features(cfg) else []),
    )


def input_names(cfg: TSDiffConfig) -> list[str]:
    """Fields a forecaster reads from a test-mode instance (PyTorchPredictor's ``input_names``)."""
    names = ["past_target", PAST_OBSERVED]
    return names + [PAST_TIME, FUTURE_TIME] if cfg.time_features else names


def check_training_data(cfg: TSDiffConfig, dataset: Dataset) -> None:
    """Raise a clear error when no series is long enough for one training window."""
    lengths = [len(e["target"]) for e in dataset]
    if not lengths:
        raise ValueError("the training dataset is empty")
    need = cfg.min_series_length()
    if max(lengths) < need:
        raise ValueError(
            f"every training series is shorter than one window: the longest has {max(lengths)} values but "
            f"context_length {cfg.context_length} + deepest lag {cfg.max_lag} + prediction_length "
            f"{cfg.prediction_length} = {need} are needed; lower --context-length, drop long lags, or bring more data"
        )
    for e in dataset:
        if not np.isfinite(np.asarray(e["target"], dtype=float)).all():
            raise ValueError(
                f"series {e.get('item_id', '?')!r} has missing or infinite values; fill them first (e.g. pandas' interpolate())"
            )


def training_windows(cfg: TSDiffConfig, dataset: Dataset, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """``n`` random full windows drawn by gluonts' TrainDataLoader: (x (n, C, L), cond (n, F, L) or None)."""
    check_training_data(cfg, dataset)
    random.seed(seed)  # gluonts' shuffle buffer draws from Python's global generator,
    np.random.seed(seed)  # its instance samplers from numpy's
    transformed = Cached(transformation(cfg).apply(dataset, is_train=True))
    batch = min(256, n)
    loader = TrainDataLoader(
        transformed, batch_size=batch, stack_fn=batchify, transform=splitter(cfg, "train"),
        num_batches_per_epoch=-(-n // batch), shuffle_buffer_length=1024,
    )
    xs, conds = [], []
    for b in loader:
        w = window(cfg, b["past_target"], b[PAST_OBSERVED], b["future_target"], b.get(PAST_TIME), b.get(FUTURE_TIME))
        xs.append(w.x)
        conds.append(w.cond)
    x = torch.cat(xs)[:n]
    cond = torch.cat(conds)[:n] if cfg.time_features else None
    return x, cond


@dataclass
class Window:
    """A batch of scaled windows: x (B, C, L), observed mask (B, C, L), loc/scale (B, 1), cond, prior."""

    x: Tensor
    mask: Tensor
    loc: Tensor
    scale: Tensor
    cond: Tensor | None
    prior: Tensor  # scaled target before the window (B, max_lag), for rebuilding lag channels

    def unscale(self, y: Tensor) -> Tensor:
        """Scaled target values (B, ..., T) back to data units."""
        shape = (-1,) + (1,) * (y.ndim - 1)
        return y * self.scale.reshape(shape) + self.loc.reshape(shape)


def stack_lags(cfg: TSDiffConfig, prior: Tensor, seq: Tensor) -> Tensor:
    """(B, L) target and (B, max_lag) history -> (B, 1 + len(lags), L) channels (differentiable)."""
    if not cfg.lags:
        return seq[:, None]
    with warnings.catch_warnings():  # gluonts indexes with a list of slices, which torch now warns about
        warnings.simplefilter("ignore", UserWarning)
        lags = lagged_sequence_values(list(cfg.lags), prior, seq, dim=1)  # (B, L, n_lags)
    return torch.cat([seq[:, None], lags.permute(0, 2, 1)], dim=1)


def window(
    cfg: TSDiffConfig,
    past_target: Tensor,
    past_observed: Tensor,
    future_target: Tensor | None = None,
    past_time: Tensor | None = None,
    future_time: Tensor | None = None,
) -> Window:
    """gluonts instance fields -> a scaled :class:`Window`. Without ``future_target`` the prediction
    part is zero and unobserved (what guidance fills in)."""
    past_target, past_observed = past_target.float(), past_observed.float()
    b, lp = past_target.shape
    if lp != cfg.past_length:
        raise ValueError(f"past_target has length {lp}, this model needs {cfg.past_length} (context + deepest lag)")
    known = future_target is not None
    future = future_target.float() if known else past_target.new_zeros(b, cfg.prediction_length)
    future_obs = torch.ones_like(future) if known else torch.zeros_like(future)
    ctx, ctx_obs = past_target[:, -cfg.context_length :], past_observed[:, -cfg.context_length :]
    scaler = MeanScaler(dim=1, keepdim=True, minimum_scale=1e-5) if cfg.scaling == "mean" else StdScaler(dim=1, keepdim=True)
    _, loc, scale = scaler(ctx, ctx_obs)  # (B, 1) each; MeanScaler's loc is 0
    full = (torch.cat([past_target, future], 1) - loc) / scale
    obs = torch.cat([past_observed, future_obs], 1)
    prior, seq = full[:, : -cfg.length], full[:, -cfg.length :]
    x = stack_lags(cfg, prior, seq)
    mask = stack_lags(cfg, obs[:, : -cfg.length], obs[:, -cfg.length :])
    cond = None
    if cfg.time_features:
        if past_time is None or future_time is None:
            raise ValueError("this model uses time features: pass past_time_feat and future_time_feat")
        cond = torch.cat([past_time, future_time], 1)[:, -cfg.length :].float().transpose(1, 2)  # (B, F, L)
    return Window(x, mask, loc, scale, cond, prior)
