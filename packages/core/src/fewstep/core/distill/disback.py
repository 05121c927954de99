"""DisBack: distil along the recorded degradation path teacher -> initial student, backwards.

Zhang et al. 2024, "Distribution Backtracking Builds A Faster Convergence Trajectory for Diffusion
Distillation" (SYZhang0805/DisBack). Score distillation (DMD / VSD) starts with a large gap between
the teacher's score and the initial student's distribution. DisBack bridges it in two stages:

1. Degradation recording: a copy of the teacher s_theta is fine-tuned by denoising score
   matching on the INITIAL student's samples; N snapshots s'_1 .. s'_N are taken on the way, so
   s'_0 = s_theta, s'_1, ..., s'_N trace the path from the teacher to the initial student's
   distribution.
2. Distribution backtracking: the student is distilled with the score-distillation
   gradient fake - real (``critic.dmd_direction``; the fake score starts as s'_N, a model of the
   initial student that stage 1 made for free, and keeps training on the student's samples), while
   the REAL score walks the path backwards, s'_{N-1}, ..., s'_1, s'_0 = teacher: each target is
   close to where the student is, so the gradient is informative from the start.

Here both stages run inside the one train loop (``DistillModule.iteration`` tells the stage), so resume
works without extra state: the degrading copy IS ``module.critic`` (stage 1 trains it on the frozen
initial student; stage 2 continues it as the fake score), and the snapshots s'_1..s'_N are frozen
Denoisers in ``module.path`` (an ``nn.ModuleList`` with ``requires_grad=False``), so they are saved
in every training checkpoint and restored on resume; s'_0 is the teacher itself (not stored).
Snapshot k is taken at the start of step ``k * record_steps / N``, i.e. after that many critic
updates on the initial student's samples. During stage 1 the student gets no gradient (the AdamW
step skips it), so its samples are the initial student's.

Simplified against the paper: the paper fine-tunes the degradation copy for a fixed budget and then
backtracks with a per-checkpoint iteration budget on top of Diff-Instruct / SiD; here stage 1 takes
``record_fraction`` of the steps, the intermediate targets share ``backtrack_fraction`` of stage 2
equally and the teacher holds the rest, and the divergence is DMD's (``critic.dmd_direction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..parts import STUDENT, Part
from .base import Batch, DistillModule, Objective, frozen_copy
from .critic import dmd_direction, dmd_loss, fake_score_loss, make_fake_score
from .rollout import student_samples


# -- the student's own samples (shared with the multi-student objective) --------------------------------
def generate(module: DistillModule, batch: Batch, generator: torch.Generator, with_grad: bool = True) -> Tensor:
    """Samples of the student, as it samples (consistency steps on its own grid from pure noise at
    t_max, ``rollout.student_samples``). A K-step student runs a random number k < K of steps without
    gradient (one k per batch, drawn even for K = 1) and the (k+1)-th with it when ``with_grad``
    (DMD2's backward simulation, Yin et al. 2024b, Sec. 4.5), so every step it takes is trained.
    Shape (B, *sample_shape)."""
    return student_samples(module, batch.size, batch.cond, generator, grad=with_grad)[0]


@dataclass(frozen=True)
class DisBack(Objective):
    """DisBack (Zhang et al. 2024): degradation recording, then score distillation whose real score
    walks the recorded path backwards to the teacher (module doc). Data-free (labels only).

    ``path_size`` N snapshots; ``record_fraction`` of the steps record the path; of the rest,
    ``backtrack_fraction`` walks s'_{N-1} .. s'_1 and the teacher takes the remainder.
    ``critic_lr_scale``: the fake score's learning-rate multiple (DMD2's two time-scale rule).
    """

    name: ClassVar[str] = "disback"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = (
        "Zhang et al. 2024, Distribution Backtracking Builds A Faster Convergence Trajectory for Diffusion "
        "Distillation, arXiv:2408.15991"
    )

    path_size: int = 4
    record_fraction: float = 0.2
    backtrack_fraction: float = 0.5
    critic_lr_scale: float = 1.0

    def __post_init__(self):
        if self.path_size < 1:
            raise ValueError(f"path_size={self.path_size}: record at least 1 snapshot of the degradation path")
        if not 0.0 < self.record_fraction < 1.0:
            raise ValueError(f"record_fraction={self.record_fraction} must be in (0, 1): both stages need steps")
        if not 0.0 <= self.backtrack_fraction <= 1.0:
            raise ValueError(f"backtrack_fraction={self.backtrack_fraction} must be in [0, 1]")
        if self.critic_lr_scale <= 0:
            raise ValueError(f"critic_lr_scale={self.critic_lr_scale} must be > 0")

    def setup(self, module: DistillModule) -> None:
        if self.record_steps(module) >= module.total_iterations:
            raise ValueError(
                f"{module.total_iterations} training steps leave none for backtracking after recording {self.path_size} "
                f"snapshots ({self.record_steps(module)} steps): train longer or lower path_size / record_fraction"
            )
        module.critic = make_fake_score(module.teacher).requires_grad_(True)  # trainable even for foreign nets
        module.path = nn.ModuleList(frozen_copy(module.critic) for _ in range(self.path_size))

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    # -- the schedule -----------------------------------------------------------------------------------
    def record_steps(self, module: DistillModule) -> int:
        """Stage 1 length: a multiple of N (each snapshot after the same number of critic updates), >= N."""
        per = max(1, math.floor(self.record_fraction * module.total_iterations / self.path_size))
        return per * self.path_size

    def path(self, module: DistillModule) -> list[Denoiser]:
        """[s'_0 = teacher, s'_1, ..., s'_N]: the degradation path, teacher first."""
        return [module.teacher, *module.path]

    def real_index(self, module: DistillModule, step: int | None = None) -> int:
        """Index into :meth:`path` of the real score at a stage-2 step: N-1, ..., 1 in equal segments
        over ``backtrack_fraction`` of stage 2, then 0 (the teacher)."""
        step = int(module.iteration) if step is None else step
        n, rec = self.path_size, self.record_steps(module)
        if n == 1:
            return 0
        stage2 = max(1, module.total_iterations - rec)
        u = (step - rec) / (self.backtrack_fraction * stage2) if self.backtrack_fraction > 0 else 1.0
        if u >= 1.0:
            return 0
        return n - 1 - min(n - 2, math.floor(max(0.0, u) * (n - 1)))

    @torch.no_grad()
    def _snapshot(self, module: DistillModule, step: int) -> None:
        """At the start of step k * per (k = 1..N), s'_k <- the degrading copy after k * per updates."""
        per = self.record_steps(module) // self.path_size
        if step > 0 and step % per == 0 and step // per <= self.path_size:
            module.path[step // per - 1].load_state_dict(module.critic.state_dict())

    # -- the loss -----------------------------------------------------------------------------------------
    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        step = int(module.iteration)
        self._snapshot(module, step)
        module.path.eval()  # frozen targets evaluate as the teacher does (x0 clipping included)
        cond = batch.cond
        if step < self.record_steps(module):
            # Stage 1: degradation recording, the teacher copy learns the initial student's distribution.
            x = generate(module, batch, generator, with_grad=False)
            return fake_score_loss(module.critic, x, cond, generator)
        # Stage 2: distribution backtracking, real score s'_i with i walking N-1 -> 0.
        real = self.path(module)[self.real_index(module, step)]
        x = generate(module, batch, generator, with_grad=True)
        direction = dmd_direction(real, module.critic, x, cond, generator, module.teacher_guidance)
        return dmd_loss(x, direction) + fake_score_loss(module.critic, x.detach(), cond, generator)


__all__ = ["DisBack", "generate"]
