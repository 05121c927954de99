"""fewstep for time series: TSDiff (Kollovieh et al. 2023) on gluonts, sampled fast with fewstep's solvers.

Predict (observation self-guidance), refine (any gluonts forecast, via the model's implicit
density), synthesize (unconditional samples, linear predictive score), on offline data.
"""

from .config import TSDiffConfig
from .data import SeriesData, artificial, from_csv, load, statsmodels_series
from .guidance import GuidanceConfig, ObservationGuided, default_scale, guided_sample
from .model import TrainSettings, build_tsdiff, load_tsdiff, save_tsdiff, train_tsdiff, tsdiff_config
from .predictor import tsdiff_predictor
from .refine import RefineConfig, RefinedPredictor

__all__ = [
    "TSDiffConfig",
    "SeriesData",
    "artificial",
    "from_csv",
    "load",
    "statsmodels_series",
    "GuidanceConfig",
    "ObservationGuided",
    "default_scale",
    "guided_sample",
    "TrainSettings",
    "build_tsdiff",
    "load_tsdiff",
    "save_tsdiff",
    "train_tsdiff",
    "tsdiff_config",
    "tsdiff_predictor",
    "RefineConfig",
    "RefinedPredictor",
]
