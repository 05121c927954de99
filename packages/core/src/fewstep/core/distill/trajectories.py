"""Teacher sampling trajectories as training data (MLCM, TBCM, reflow, SlimFlow, ...).

A multistep solver calls the model exactly once at every grid time with the current state, so
recording those inputs gives the trajectory at the grid times with the solver's own accuracy.
The trajectories are generated once and cached next to the run (atomic safetensors), so a resumed
run reuses them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..denoiser import Denoiser
from ..io import checkpoint_paths, load_weights, save_weights
from ..solvers import SOLVERS, Bound, sampling_grid


@dataclass(frozen=True)
class TrajectoryConfig:
    n: int = 2048
    solver: str = "dpmpp_2m"  # must be a one-NFE-per-grid-time multistep solver
    num_steps: int = 16  # the teacher's sampling steps per trajectory
    grid: str = "logsnr"
    guidance: float = 1.0
    batch_size: int = 256
    seed: int = 1234

    def __post_init__(self):
        if self.solver not in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"):
            raise ValueError(f"trajectory solver {self.solver!r}: use ddim, dpmpp_2m, dpmpp_3m or unipc (one NFE per grid time)")
        if self.n < 1 or self.num_steps < 1:
            raise ValueError("n and num_steps must be >= 1")


class _Recorder:
    def __init__(self, bound: Bound):
        self.bound, self.schedule, self.states = bound, bound.schedule, []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.states.append(x.detach().clone())
        return self.bound(x, t)


@torch.no_grad()
def teacher_trajectories(teacher: Denoiser, cfg: TrajectoryConfig, progress: bool = True) -> dict[str, Tensor]:
    """{"traj": (N, K+1, ...) states at "traj_t" (K+1,) descending times ending at 0, "cond": (N,)}."""
    ts = sampling_grid(teacher.schedule, cfg.num_steps, cfg.grid, denoise_to_zero=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(iter(teacher.parameters()), torch.empty(0)).device
    n_cls = max(1, teacher.num_classes)
    out, conds = [], []
    for i in tqdm(range(0, cfg.n, cfg.batch_size), desc="teacher trajectories", disable=not progress):
        b = min(cfg.batch_size, cfg.n - i)
        cond = (torch.arange(i, i + b) % n_cls).to(device) if teacher.num_classes else None
        x = torch.randn(b, *teacher.sample_shape, generator=gen).to(device) * teacher.schedule.sigma(ts[0]).float()
        rec = _Recorder(Bound(teacher, cond, cfg.guidance))
        final = SOLVERS[cfg.solver](rec, x, ts.to(device))
        states = rec.states + [final]
        if len(states) != len(ts):
            raise RuntimeError(f"recorded {len(states)} states for {len(ts)} grid times")
        out.append(torch.stack(states, 1).float().cpu())
        if cond is not None:
            conds.append(cond.cpu())
    data = {"traj": torch.cat(out), "traj_t": ts.float()}
    if conds:
        data["cond"] = torch.cat(conds)
    return data


def cached_trajectories(teacher: Denoiser, cfg: TrajectoryConfig, path: str | os.PathLike, progress: bool = True) -> dict[str, Tensor]:
    """Load the trajectories at ``path`` if they were made with ``cfg``, else generate and save them."""
    path = Path(path)
    if checkpoint_paths(path)[0].is_file():
        tensors, card = load_weights(path)
        if card.get("trajectory_config") == asdict(cfg):
            return tensors
    data = teacher_trajectories(teacher, cfg, progress)
    save_weights(path, data, {"kind": "teacher-trajectories", "trajectory_config": asdict(cfg)})
    return data
