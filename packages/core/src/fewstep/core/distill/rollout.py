"""The student's own samples: one-step generation from noise at t_max, and backward simulation.

The distribution-matching and score-distillation objectives (DMD, DMD2, Decoupled DMD, Flash-DMD,
DisBack, MSD, VSD, SIM, Uni-Instruct, TDM) are data-free in their generator update: they train the
student on samples it draws itself. A one-step generator draws x = G(sigma(t_max) z, t_max) (DMD,
Yin et al. 2024, Sec. 3.1). A K-step student is trained by backward simulation (DMD2, Yin et al.
2024b, Sec. 4.5): the input of its step k is the state its own K-step sampling rule reaches from
noise, t_0 = t_max > t_1 > ... > t_{K-1}, so that training sees what inference sees:

    x_{t_0} = sigma(t_0) z,   x0_j = G(x_{t_j}, t_j),   x_{t_{j+1}} = alpha_{j+1} x0_j + sigma_{j+1} eps_j  (j < k)

(consistency sampling, Song et al. 2023, Alg. 1, a fresh eps_j per stage; or the deterministic DDIM
jump, Song et al. 2021, Eq. 12, with ``rule="ddim"``). The stages before k run without gradient;
the call at step k, x0_k = G(x_{t_k}, t_k), is the one that trains (:func:`rollout`).

Pieces, each used on its own by the objectives whose draws differ:

- :func:`student_times`: the K times t_0..t_{K-1} a student is called at (its sampler's grid);
- :func:`pure_noise`: the scaled noise sigma(t_0) z the rollout starts from;
- :func:`draw_steps`: k ~ U{0..K-1}, one per batch (DisBack, VSD / SIM) or one per row (DMD2);
- :func:`backward_simulation`: the no-gradient stages, to x_{t_k} (per-row k);
- :func:`rollout`: backward simulation plus the final call at t_k, with gradient;
- :func:`student_samples`: all of it for a ``DistillModule``: noise, k and the rollout.

Random draws, in order: k (when drawn here), the noise z, then one eps of the batch's shape per
consistency stage, for every row whether or not the row is still moving (so rows with different k
share their noise, as ``sample(..., solver="consistency")`` draws it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .base import DistillModule, randn, uniform_times
from ..updates import ddim_jump, noise_to

RULES = ("consistency", "ddim")


def student_times(student: Denoiser) -> list[float]:
    """The K nonzero times a K-step student is called at, t_max first: its sampler's explicit grid
    without the final 0, else ``uniform_times`` (K = ``student.card.student_steps``, 1 when unset)."""
    steps = max(1, student.card.student_steps or 1)
    grid = (student.card.sampler.grid if student.card.sampler else None)
    if not isinstance(grid, (list, tuple, Tensor)):  # none, or a grid by name: the uniform grid
        grid = uniform_times(student.schedule, steps)
    return [float(t) for t in grid if float(t) > 0][:steps]


def param_like(student: Denoiser) -> Tensor:
    """An empty tensor on the student's device, in its parameters' dtype (CPU float32 without any)."""
    p = next(iter(student.parameters()), None)
    return torch.empty(0) if p is None else torch.empty(0, device=p.device, dtype=p.dtype)


def pure_noise(
    student: Denoiser, shape: Sequence[int], generator: torch.Generator, like: Tensor, t: float | None = None
) -> tuple[Tensor, Tensor]:
    """(sigma(t) z, t (B,) float64): Gaussian z of ``shape`` from ``generator`` on ``like``'s device
    and dtype, scaled to the student's first time t (default the schedule's t_max): the one-step
    generator's input (DMD, Sec. 3.1) and the start of every rollout."""
    sched = student.schedule
    t = torch.full((shape[0],), float(sched.t_max if t is None else t), dtype=torch.float64, device=like.device)
    return randn(tuple(shape), generator, like) * float(sched.sigma(t[:1])), t


def draw_steps(steps: int, generator: torch.Generator, n: int | None = None) -> Tensor:
    """k ~ U{0, ..., K-1}, the index of the step that trains: one for the whole batch (``n`` None,
    a 0-d tensor) or one per row (n,) (DMD2, Sec. 4.5). Always one draw from ``generator``."""
    return torch.randint(0, steps, () if n is None else (n,), generator=generator)


def next_state(
    schedule, x: Tensor, x0: Tensor, t: Tensor, s: Tensor, generator: torch.Generator, rule: str = "consistency"
) -> Tensor:
    """The sampler's move from (x, t) with prediction x0 to time s < t, per sample (B,) times:
    "consistency" re-noises x0 with fresh eps (Song et al. 2023, Alg. 1; one draw of x0's shape),
    "ddim" jumps deterministically (Song et al. 2021, Eq. 12, eta = 0; no draw)."""
    if rule == "consistency":
        return noise_to(schedule, x0, s, randn(x0.shape, generator, x0))
    if rule == "ddim":
        return ddim_jump(schedule, x, x0, t, s)
    raise ValueError(f"rule={rule!r}: use one of {RULES}")


@torch.no_grad()
def backward_simulation(
    student: Denoiser,
    z: Tensor,
    k: int | Tensor,
    times: Sequence[float] | Tensor,
    cond: Tensor | None,
    generator: torch.Generator,
    rule: str = "consistency",
) -> tuple[Tensor, Tensor]:
    """DMD2's backward simulation (Yin et al. 2024b, Sec. 4.5), without gradient: the state x_{t_k}
    that the student's own sampling (``rule``, see :func:`next_state`) reaches on ``times`` from ``z``
    (noise already scaled by sigma(t_0)). ``k`` is one step index for all rows or one per row (B,);
    ``times`` holds at least max(k) + 1 times from t_0 = t_max (a K+1 grid ending in 0 will do).
    One consistency draw of the batch's shape per stage, for all rows, in stage order.
    Returns (x_k, t_k (B,) float64)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: use one of {RULES}")
    times = torch.as_tensor(times, dtype=torch.float64).to(z.device)
    n, x = z.shape[0], z
    k = torch.as_tensor(k).to(z.device).expand(n)
    for j in range(int(k.max()) if n else 0):
        t, s = times[j].expand(n), times[j + 1].expand(n)
        x0 = student(x, t, cond)
        x_next = next_state(student.schedule, x, x0, t, s, generator, rule)
        x = torch.where((k > j).view(-1, *([1] * (x.ndim - 1))), x_next, x)
    return x, times[k]


def rollout(
    student: Denoiser,
    z: Tensor,
    k: int | Tensor,
    times: Sequence[float] | Tensor,
    cond: Tensor | None,
    generator: torch.Generator,
    grad: bool = True,
    rule: str = "consistency",
) -> tuple[Tensor, Tensor]:
    """:func:`backward_simulation` to x_{t_k}, then the student's call there, x0 = G(x_{t_k}, t_k),
    with gradient when ``grad`` (and grad mode) is on: the earlier stages never carry gradient, so
    every step the student takes gets trained at the cost of one backward pass.
    Returns (x0, t_k (B,) float64)."""
    x_k, t_k = backward_simulation(student, z, k, times, cond, generator, rule)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        x0 = student(x_k, t_k, cond)
    return x0, t_k


def student_samples(
    module: DistillModule,
    n: int,
    cond: Tensor | None,
    generator: torch.Generator,
    k: int | Tensor | None = None,
    grad: bool = True,
    rule: str = "consistency",
) -> tuple[Tensor, Tensor]:
    """n samples of ``module.student`` as it samples, from pure noise at t_0 = t_max on its own grid
    (:func:`student_times`), by :func:`rollout`: step ``k`` (an index, or (n,) per row) trains; k None
    draws one for the batch, k ~ U{0..K-1} (:func:`draw_steps`, before the noise). A one-step
    student gives x0 = G(sigma(t_max) z, t_max). Returns (x0 (n, *sample_shape), t_k (n,) float64)."""
    student = module.student
    times = student_times(student)
    if k is None:
        k = draw_steps(len(times), generator)
    z, _ = pure_noise(student, (n, *module.teacher.sample_shape), generator, param_like(student), times[0])
    return rollout(student, z, k, times, cond, generator, grad, rule)


__all__ = [
    "RULES",
    "backward_simulation",
    "draw_steps",
    "next_state",
    "param_like",
    "pure_noise",
    "rollout",
    "student_samples",
    "student_times",
]
