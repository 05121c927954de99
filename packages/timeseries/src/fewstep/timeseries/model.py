"""TSDiff as a fewstep Denoiser: build, train with the core loop, save and load.

The model is an unconditional eps-prediction diffusion model over (1 + lags, context + prediction)
windows on DDPM's linear beta schedule (Kollovieh et al. 2023, Sec. 3: T = 100, beta 1e-4..0.1).
Its :class:`TSDiffConfig` rides in ``Denoiser.card.provenance["tsdiff"]``, so ``load_denoiser`` alone restores
a forecaster, and any fewstep Denoiser carrying it (a distilled student with ``student_steps`` set,
a quantized copy) forecasts, refines and synthesises the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from fewstep.core.card import ModelCard
from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.losses import DenoisingLoss
from fewstep.core.models import resolve_model
from fewstep.core.schedules import VPDiscrete
from fewstep.core.train import TrainConfig, TrainResult, train
from gluonts.dataset.common import Dataset

from .backbone import TSDiffNet, TSDiffNetConfig
from .config import TSDiffConfig
from .features import num_time_features, training_windows


def build_tsdiff(cfg: TSDiffConfig, seed: int = 0) -> Denoiser:
    """A fresh TSDiff Denoiser (S4 backbone, eps-prediction, DDPM linear betas)."""
    torch.manual_seed(seed)
    net = TSDiffNet(TSDiffNetConfig(
        channels=cfg.channels, length=cfg.length, hidden=cfg.hidden, layers=cfg.layers, state=cfg.state,
        cond_channels=num_time_features(cfg),
    ))
    schedule = VPDiscrete("linear", cfg.beta_start, cfg.beta_end, cfg.diffusion_steps)
    return Denoiser(net, schedule, "eps", sample_shape=(cfg.channels, cfg.length), card=ModelCard(provenance={"tsdiff": cfg.to_dict()}))


def tsdiff_config(den: Denoiser) -> TSDiffConfig:
    """The window settings a Denoiser was trained for (from its card's provenance)."""
    facts = den.card.provenance
    if "tsdiff" not in facts:
        raise ValueError(
            "this Denoiser carries no TSDiff window settings (card.provenance['tsdiff']); build it with "
            "fewstep.timeseries.build_tsdiff, or copy the teacher's provenance onto a distilled student"
        )
    return TSDiffConfig.from_dict(facts["tsdiff"])


@dataclass(frozen=True)
class TrainSettings:
    """Training budget for :func:`train_tsdiff` (passed on to the core ``TrainConfig``)."""

    iterations: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    windows: int = 4096  # gluonts training windows drawn once, then sampled by the core loop
    ema_decay: float = 0.995
    warmup_iterations: int = 100
    seed: int = 0
    progress: bool = True
    save_every: int | None = None  # write the resumable checkpoint every this many iterations ...
    save_every_seconds: float | None = 120.0  # ... or after this much work (always at the end and when stopped)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            iterations=self.iterations, batch_size=self.batch_size, lr=self.lr, ema_decay=self.ema_decay,
            warmup_iterations=self.warmup_iterations, seed=self.seed, progress=self.progress,
            save_every=self.save_every, save_every_seconds=self.save_every_seconds,
        )


def check_training_size(cfg: TSDiffConfig, settings: TrainSettings) -> None:
    """Refuse, before allocating, a model or training run that cannot fit in memory: the weights with
    their gradients, Adam moments and EMA (5 copies), the drawn training windows, and one batch's
    activations (what a guided call keeps, :func:`guidance.sampling_bytes`, twice for training)."""
    from fewstep.core import checks

    from .guidance import sampling_bytes

    h, n = cfg.hidden, cfg.layers
    params = n * (3 * h * h + 4 * h * cfg.state + 8 * h) + 4 * h * h + 4 * h * cfg.channels  # blocks + time MLP + in/out
    checks.check_fits(5 * 4 * params, f"a TSDiff of hidden {h} x {n} layers", "lower --hidden or --layers")
    windows = 4 * settings.windows * cfg.length * (cfg.channels + 12)
    batch = 2 * sampling_bytes(settings.batch_size, cfg.channels, cfg.length, h, n)
    checks.check_fits(windows + batch, f"training on windows of {cfg.length} steps (context + prediction)",
                      "lower --context-length, --prediction-length or --hidden")


def train_tsdiff(
    cfg: TSDiffConfig, train_data: Dataset, settings: TrainSettings, out_dir: str | os.PathLike,
    den: Denoiser | None = None, resume: bool = True,
) -> tuple[Denoiser, TrainResult]:
    """Train TSDiff with ``fewstep.core.train.train`` (denoising loss, EMA, atomic checkpoints, resume).

    A checkpoint in ``out_dir`` made with the same settings is resumed from (other settings are
    refused with the differing keys); ``resume=False`` discards it and starts over (``--restart``).
    Returns the Denoiser holding the EMA weights (in eval mode) and the training result.
    """
    if den is None:
        check_training_size(cfg, settings)
    den = den if den is not None else build_tsdiff(cfg, settings.seed)
    x, cond = training_windows(cfg, train_data, settings.windows, settings.seed)
    loss = DenoisingLoss()

    def loss_fn(model, batch, gen):
        return loss(model, den, batch[0], batch[1], gen)

    result = train(den, loss_fn, [x, cond], settings.train_config(), out_dir,
                   card={"tsdiff": cfg.to_dict(), "train": asdict(settings)}, resume=resume)
    den.load_state_dict(result.ema)
    return den.eval(), result


def save_tsdiff(den: Denoiser, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``path.safetensors`` + ``path.json`` (core checkpoint format; the card holds the window)."""
    tsdiff_config(den)  # refuse to save a model that could not forecast after loading
    save_denoiser(den, path, provenance=extra)


def load_tsdiff(name_or_path: str | os.PathLike, device: str = "cpu") -> Denoiser:
    """Load a TSDiff checkpoint (path or shipped name); checks it carries the window settings."""
    den = load_denoiser(resolve_model(name_or_path), device=device)
    tsdiff_config(den)
    return den
