"""AutoDiffusion grid search for an image model, scored by a proxy FD or by error to a reference solve.

The search optimises its score, so the score must not be the evaluation: ``proxy_fd`` is the
Fréchet distance in the *reward* classifier's features (``classifier.ROLES``) to the *train* split,
while dFD (the evaluation) uses the evaluation classifier on the test split, which the search never sees.
"""

from __future__ import annotations

import os

import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.solvers import sample
from fewstep.core.tuning import SearchConfig, SearchResult, autodiffusion_search, error_to_reference, save_searched_grid

from .evaluate import dataset_of
from .quality import proxy_fd

METRICS = ("proxy_fd", "error")


def search_grid(
    den: Denoiser,
    config: SearchConfig,
    solver: str = "dpmpp_2m",
    n: int = 250,
    metric: str = "proxy_fd",
    reference_steps: int = 100,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search a ``config.num_steps``-step grid for ``solver`` on ``n`` fixed class-balanced noises.

    ``metric="proxy_fd"`` scores candidates by FD in the reward classifier's features against the
    train split (never the evaluation net or split); ``"error"`` by RMS error to a
    ``reference_steps``-step DPM-Solver++(2M) solve of the same noise. Saves the grid to ``out``.
    """
    if metric == "dfd":
        raise ValueError("metric='dfd' would tune the grid on the evaluation itself; use proxy_fd (FD in the reward "
                         "classifier's features against the train split) or error")
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; use one of {METRICS}")
    dataset = dataset_of(den)
    gen = torch.Generator().manual_seed(config.seed + 12345)
    noise = torch.randn(n, *den.sample_shape, generator=gen)
    labels = torch.arange(n) % max(1, den.num_classes) if den.num_classes else None
    if metric == "error":
        score = error_to_reference(sample(den, noise, "dpmpp_2m", reference_steps, "logsnr", cond=labels, denoise_to_zero=True))
    else:

        def score(x: torch.Tensor) -> float:
            return proxy_fd(dataset, x.clamp(-1, 1))

    # Candidates end at t = 0, as `evaluate` samples (denoise_to_zero): every step is a searched one.
    result = autodiffusion_search(den, noise, score, solver=solver, config=config, cond=labels, progress=progress, final_zero=True)
    if out is not None:
        save_searched_grid(out, result.grid, {**result.meta, "metric": metric, "n": n, "model_dataset": dataset})
    return result
