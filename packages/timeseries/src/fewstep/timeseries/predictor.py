"""TSDiff forecasts as gluonts ``SampleForecast`` objects through gluonts' ``PyTorchPredictor``.

The predictor's input transform is the gluonts pipeline of :mod:`.features` in test mode; its
network draws guided samples (:mod:`.guidance`) and returns them in data units, (B, S, P).
"""

from __future__ import annotations

import torch
from fewstep.core.denoiser import Denoiser
from gluonts.torch.model.predictor import PyTorchPredictor
from torch import Tensor, nn

from .features import input_names, splitter, transformation, window
from .guidance import GuidanceConfig, guided_sample
from .model import tsdiff_config


class TSDiffForecaster(nn.Module):
    """gluonts prediction network: (past_target, past_observed[, time features]) -> samples (B, S, P)."""

    def __init__(self, den: Denoiser, guidance: GuidanceConfig, num_samples: int = 100, seed: int = 0):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        self.den, self.guidance, self.num_samples = den, guidance, num_samples
        self.cfg = tsdiff_config(den)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, past_target: Tensor, past_observed_values: Tensor, past_time_feat: Tensor | None = None,
                future_time_feat: Tensor | None = None) -> Tensor:
        cfg = self.cfg
        w = window(cfg, past_target, past_observed_values, None, past_time_feat, future_time_feat)
        if not (bool(torch.isfinite(w.scale).all()) and bool(torch.isfinite(w.loc).all())):
            raise FloatingPointError("the context's scale is NaN/inf (values too large for float32?): rescale the series")
        x = guided_sample(self.den, w.x, w.mask, self.num_samples, self.guidance, w.cond, self.generator)
        y = x[:, :, 0, -cfg.prediction_length :]  # target channel, prediction part: (B, S, P)
        out = w.unscale(y)
        if not bool(torch.isfinite(out).all()):
            bad = torch.nonzero(~torch.isfinite(out))[0].tolist()
            raise FloatingPointError(
                f"the forecast is NaN/inf in data units (series {bad[0]} of the batch, sample {bad[1]}, horizon step "
                f"{bad[2] + 1}) although the sampler's output was finite: the series' values are too large for float32; "
                f"rescale the series"
            )
        return out


def tsdiff_predictor(
    den: Denoiser, guidance: GuidanceConfig | None = None, num_samples: int = 100, batch_size: int = 16, seed: int = 0,
) -> PyTorchPredictor:
    """A gluonts Predictor that forecasts with observation self-guidance (SampleForecast objects)."""
    cfg = tsdiff_config(den)
    den.eval()
    net = TSDiffForecaster(den, guidance or GuidanceConfig(), num_samples, seed)
    return PyTorchPredictor(
        input_names=input_names(cfg), prediction_net=net, batch_size=batch_size,
        prediction_length=cfg.prediction_length, input_transform=transformation(cfg) + splitter(cfg, "test"),
        device=next(den.parameters()).device,
    )
