"""ArcFlow (Yang et al. 2026, arXiv:2602.09014; code pnotp/ArcFlow): 2-NFE students whose velocity
within a step is a mixture of momentum processes, integrated in closed form.

The student is the teacher's net with a wider output head (K velocities, K mixture logits, K-1 rates
per pixel; see :mod:`fewstep.core.solvers.arcflow` for the policy and its exact integral). It keeps the
teacher's schedule and parametrisation: each of the K "means" is a prediction the teacher's way,
turned into an RF velocity at the step's source point, and the K copies of the teacher's output
layer make the untrained student the teacher's Euler (DDIM) sampler up to the rate spread.

Training is the released code's data-free policy imitation (``ArcFlowImitationDataFree``, after
pi-Flow, Chen et al. 2025): roll the student's own policy out from noise; in the step under training
sample M times s_a, move there with the detached policy (early in training partly with teacher Euler
steps: "scheduled trajectory mixing", teacher share 1 -> 0), ask the teacher for its velocity
u_T(x_a, s_a), and regress the policy's average velocity over [s_a - window, s_a] onto it:

    L = 1/M sum_a || v_bar_policy(s_a) - u_T(x_a, s_a) ||^2.

Gradients reach only the policy (its velocities, weights and rates); rollouts and the teacher are
detached. Each sample trains one segment (chosen at random; the released code cycles through them
across iterations), its loss weighted by the segment's length as there.

Adapted for small pixel-space teachers: the paper fine-tunes LoRA adapters (<5% of the weights) of
a flow-matching transformer; here the whole net trains, and its K heads predict in the teacher's
parametrisation (eps for the digits teacher) so that the copied output layer starts as the teacher.
Every component's x0 is clipped to the student's ``clip_x0`` (as the Denoiser and the teacher do),
without which eps heads at high noise turn tiny errors into huge velocities (x0 = (x - sigma eps) /
alpha). Left out: the inference temperature (1 in the released configs) and the loss scale 30 (a
constant). Equation numbers are not cited: the paper text was not available offline; the maths
follows the released code (``lakonlab/models/diffusions/arcflow.py``, ``policies/arcflow.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..card import SamplerRule
from ..denoiser import Denoiser
from ..solvers.arcflow import policy_at, rf_scale, rf_time, schedule_time, wide_channels
from .base import Batch, DistillModule, Objective, StudentSpec, mse, randn
from .reflow import teacher_velocity


def wide_student_net(
    teacher_net: nn.Module, components: int, rate_range: tuple[float, float], noise: float = 0.05, seed: int = 0
) -> nn.Module | None:
    """The teacher's UNet with an ArcFlow head, initialised from the teacher (None for foreign nets).

    Every velocity head is a copy of the teacher's output conv plus bias noise ``noise`` (to break the
    symmetry; the released code's 0.05), the logits start at 0 (equal weights) and the rates at
    biases spread evenly over ``rate_range`` with zero weights (the released code's init:
    log-spaced 0.2..4 passed through log and then used as the rate, i.e. g in [log 0.2, log 4]).
    """
    from ..nets import build_net, unet_config

    cfg = unet_config(teacher_net, "ArcFlow's widened output")
    if cfg is None:
        return None
    c = cfg["out_channels"] or cfg["in_channels"]
    k = components
    net = build_net("unet", {**cfg, "out_channels": wide_channels(k, c), "label_dropout": 0.0})
    state = {n: p for n, p in teacher_net.state_dict().items() if not n.startswith("conv_out.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not n.startswith("conv_out.") for n in missing):
        raise ValueError(f"student/teacher weights differ: missing {missing}, unexpected {unexpected}")
    g = torch.Generator().manual_seed(seed)
    w_t, b_t = teacher_net.conv_out.weight.detach().cpu(), teacher_net.conv_out.bias.detach().cpu()  # the new net is on the CPU
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.zero_()
        net.conv_out.weight[: k * c] = w_t.repeat(k, 1, 1, 1)
        net.conv_out.bias[: k * c] = b_t.repeat(k) + noise * torch.randn(k * c, generator=g)
        lo, hi = rate_range
        net.conv_out.bias[k * c + k :] = torch.linspace(lo, hi, k - 1) if k > 1 else torch.zeros(0)
    return net


@dataclass(frozen=True)
class ArcFlow(Objective):
    """ArcFlow policy-imitation distillation (module docstring); the student samples with the
    ``"arcflow"`` solver, one network call per step (``DistillConfig(steps=2)``: 2 NFE).

    Defaults are the released 2-NFE configs' (K = 16 components, 4 intermediate states, window
    3/128, component dropout 0.1, teacher share decaying over the first 1000 of 15000 iterations)
    except the time shift (3.2 there for 1328 px latents; 1 for small images). Data-free
    (data="none": the batch carries only labels, or only its size). Figures against the teacher at
    the same NFE: docs/benchmarks/distill_trajectory.md.
    """

    name: ClassVar[str] = "arcflow"
    data: ClassVar[str] = "none"  # data-free: rollouts from noise, the teacher queried on them
    student_prediction: ClassVar[str | None] = None  # its net outputs mixture velocities, not a prediction
    paper: ClassVar[str] = (
        "Yang et al. 2026, ArcFlow: 2-step text-to-image generation via non-linear flow distillation, arXiv:2602.09014"
    )

    components: int = 16  # K
    intermediate: int = 4  # M: teacher queries per segment and sample
    window: float = 3.0 / 128.0  # average the policy's velocity over [s_a - window, s_a]
    teacher_decay: float = 1000.0 / 15000.0  # share of training over which the teacher's rollout share goes 1 -> 0
    component_dropout: float = 0.1  # drop components of the detached rollout policy
    shift: float = 1.0  # step boundaries s = shift r / (1 + (shift - 1) r), r uniform
    rate_range: tuple[float, float] = (math.log(0.2), math.log(4.0))  # initial rates of components 1..K-1

    def __post_init__(self):
        if self.components < 1 or self.intermediate < 1:
            raise ValueError("components and intermediate must be >= 1")
        if not 0.0 <= self.window < 0.5:
            raise ValueError(f"window={self.window} must be in [0, 0.5)")
        if not 0.0 <= self.component_dropout < 1.0:
            raise ValueError(f"component_dropout={self.component_dropout} must be in [0, 1)")
        if self.teacher_decay < 0 or self.shift <= 0:
            raise ValueError("teacher_decay must be >= 0 and shift > 0")
        object.__setattr__(self, "rate_range", tuple(float(r) for r in self.rate_range))

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        # The teacher's schedule and prediction: the policy is formed in RF coordinates at sampling.
        return StudentSpec(net=wide_student_net(teacher.net, self.components, self.rate_range))

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """``steps`` segments uniform in RF time (after the shift), as schedule times ending at 0."""
        sched = teacher.schedule
        s_max = float(rf_time(sched, torch.tensor(sched.t_max, dtype=torch.float64)))
        r = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
        s = s_max * self.shift * r / (1 + (self.shift - 1) * r)
        ts = schedule_time(sched, s)
        ts[0] = sched.t_max
        return SamplerRule("arcflow", [float(t) for t in ts] + [0.0], {"components": self.components})

    def teacher_share(self, module: DistillModule) -> float:
        """Scheduled trajectory mixing: the teacher's share of each rollout, 1 -> 0 over teacher_decay."""
        return 0.0 if self.teacher_decay <= 0 else max(0.0, 1.0 - module.progress / self.teacher_decay)

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        student, cond = module.student, batch.cond
        sched = student.schedule
        b = batch.size
        like = next(student.parameters())
        dev = like.device  # times live beside the policy (its s_src is on the net's device)
        grid = torch.tensor(student.card.sampler.grid, dtype=torch.float64, device=dev)
        s_grid = rf_time(sched, grid)  # (N+1,) ending at 0
        n = len(grid) - 1
        # Which segment each sample trains, and its start: the student's own rollout from noise.
        j = torch.randint(0, n, (b,), generator=generator).to(dev)
        x = randn((b, *student.sample_shape), generator, like) * float(sched.sigma(grid[0]) / rf_scale(sched, grid[0]))
        x_src = x.clone()
        with torch.no_grad():
            for i in range(int(j.max())):
                policy = policy_at(student, x, grid[i].expand(b), cond)
                x = policy.integrate(x, s_grid[i].expand(b), s_grid[i + 1].expand(b))
                x_src = torch.where((j == i + 1).view(-1, *[1] * (x.ndim - 1)), x, x_src)
        t_src, s_src, s_end = grid[j], s_grid[j], s_grid[j + 1]
        policy = policy_at(student, x_src, t_src, cond)
        rollout = policy.detach().drop_components(self.component_dropout, generator)
        # Intermediate times: M policy moves and M teacher moves, shares (1 - r) and r of the segment.
        m, r = self.intermediate, self.teacher_share(module)
        room = (s_src - s_end - self.window).clamp(min=0.0)  # (B,)
        zero, one = torch.zeros(b, 1, dtype=torch.float64, device=dev), torch.ones(b, 1, dtype=torch.float64, device=dev)
        marks = torch.rand(b, m, generator=generator, dtype=torch.float64).to(dev).sort(1).values
        d_student = torch.diff(marks, dim=1, prepend=zero)
        cuts = torch.rand(b, m - 1, generator=generator, dtype=torch.float64).to(dev).sort(1).values
        d_teacher = torch.diff(cuts, dim=1, prepend=zero, append=one)
        d_student, d_teacher = d_student * ((1 - r) * room)[:, None], d_teacher * (r * room)[:, None]
        x, s, total = x_src, s_src, 0.0
        for a in range(m):
            s_a = s - d_student[:, a]
            s_b = s_a - d_teacher[:, a]
            with torch.no_grad():
                x_a = rollout.integrate(x, s, s_a)
                u_t = teacher_velocity(module, x_a, s_a, cond)
            pred = policy.mean_velocity(s_a, s_b - self.window)
            total = total + mse(pred, u_t)
            x = x_a - u_t * (s_a - s_b).to(x_a.device, x_a.dtype).view(-1, *[1] * (x_a.ndim - 1))  # teacher Euler move
            s = s_b
        return total / m * ((s_src - s_end) * n).to(total.device, total.dtype)  # segment-length weight


__all__ = ["ArcFlow", "wide_student_net"]
