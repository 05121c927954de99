"""Sample a Denoiser and measure it: dFD, accuracy, recall, NFE and seconds per sample."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from fewstep.core.checks import check_fits
from fewstep.core.denoiser import Denoiser
from fewstep.core.solvers import resolve_rule, sample

from .data import DATASETS


@dataclass(frozen=True)
class EvalConfig:
    solver: str = "auto"  # a student's own rule, else dpmpp_2m (fewstep.core.solvers.resolve_rule)
    num_steps: int | None = None  # None: the student's own step count, else 20
    grid: str | torch.Tensor | None = None  # None: the student's trained grid, else logsnr; or explicit times
    n: int = 500
    seed: int = 0
    guidance: float | None = None  # None: the model's own (a guided student's trained default; 1 for teachers)
    batch_size: int = 500
    denoise_to_zero: bool = True  # last step returns the x0 prediction (as diffusers' schedulers do)

    def __post_init__(self):
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps}: sampling needs at least 1 step")
        if self.n < 20:
            raise ValueError(f"n={self.n}: use at least 20 samples for a meaningful dFD")


def dataset_of(den: Denoiser) -> str:
    name = den.card.provenance.get("dataset")
    if name not in DATASETS:
        raise ValueError(f"the model's card names no known dataset (got {name!r}); known: {sorted(DATASETS)}")
    return name


@torch.no_grad()
def generate(den: Denoiser, cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(samples in [-1, 1], requested labels, NFE per sample, seconds per sample), class-balanced.

    Noise and labels are drawn on the CPU (the same samples on every machine) and sampled on the
    model's device; the samples come back on the CPU.
    """
    dev = next(iter(den.parameters()), torch.empty(0)).device
    per_sample = 4 * math.prod(den.sample_shape)
    check_fits(2 * cfg.n * per_sample, f"{cfg.n} samples of shape {tuple(den.sample_shape)}", "lower --n")
    labels = torch.arange(cfg.n) % max(1, den.num_classes)
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(cfg.n, *den.sample_shape, generator=gen)
    den.reset_counters()
    out, batches = [], 0
    t0 = time.perf_counter()
    for i in range(0, cfg.n, cfg.batch_size):
        y = labels[i : i + cfg.batch_size].to(dev) if den.num_classes else None
        x = sample(den, noise[i : i + cfg.batch_size].to(dev), cfg.solver, cfg.num_steps, cfg.grid, cond=y, guidance=cfg.guidance, generator=gen,
                   denoise_to_zero=cfg.denoise_to_zero)
        out.append(x.cpu())  # .cpu() also waits for the device, so the timing is honest
        batches += 1
    seconds = (time.perf_counter() - t0) / cfg.n
    return torch.cat(out).clamp(-1, 1), labels, den.nfe / batches, seconds


def evaluate_denoiser(den: Denoiser, cfg: EvalConfig = EvalConfig()) -> dict:
    """One JSON-ready dict: dfd, accuracy, precision, recall, nfe, seconds_per_sample, histogram, and
    ``metrics``: every figure of the dataset's task evaluation (dFD, KID, precision/recall,
    density/coverage, accuracy, per-class FD) with its 95% interval (``Metric.to_dict``)."""
    from .quality import scored_samples

    x, y, nfe, sec = generate(den, cfg)
    dataset = dataset_of(den)
    metrics, preds = scored_samples(dataset, x, y, cfg.seed)  # one classifier pass for every figure
    spec, steps, _, _ = resolve_rule(den, cfg.solver, cfg.num_steps, cfg.grid)
    solver = spec.name
    k = DATASETS[dataset].num_classes
    return {
        **{name: metrics[name].value for name in ("dfd", "accuracy", "precision", "recall")},
        "class_histogram": torch.bincount(preds, minlength=k).tolist(),
        "n": len(x),
        "metrics": {k: m.to_dict() for k, m in metrics.items()},
        "nfe": nfe,
        "seconds_per_sample": sec,
        "solver": solver,
        "steps": steps,
        "guidance": den.guidance if cfg.guidance is None else cfg.guidance,
    }
