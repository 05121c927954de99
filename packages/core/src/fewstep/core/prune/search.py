"""EcoDiff mask search: unit masks trained on the final sample of the whole sampling trajectory.

Zhang et al. 2024, "Effortless Efficiency: Low-Cost Pruning of Diffusion Models" (EcoDiff), end-to-end
pruning: from the same noise x_T and condition c, run the sampler twice, with the full net (the
target, no gradients) and with the masked net, and train only the mask logits on

    L = || x_0^mask(x_T, c) - x_0^full(x_T, c) ||^2 / || x_0^full ||^2  +  lambda (kept - (1 - r))^2

(the paper's end-to-end objective, the error made relative; ``kept`` is the expected share of
prunable parameters whose gate is open, Louizos et al. 2018's expected L0; r the share to remove).
Gradients through all N steps would keep every step's activations; time step gradient checkpointing
(the paper's second idea) wraps each sampler step in ``torch.utils.checkpoint`` so only each step's
x_t is kept and a step's activations are recomputed during its backward: memory no longer grows
with N, at the cost of one more forward per step. The last ``hard_share`` of iterations use the
thresholded plan's binary gates in the forward pass with the soft gates' gradient
(straight-through), so the logits settle for the hard cut that follows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..denoiser import Denoiser
from ..solvers import Bound, sampling_grid
from ..solvers.first_order import ddim_step
from .masks import MaskHooks, UnitMasks, attach_masks, plan_gates, straight_through
from .threshold import check_ratio, plan_from_scores
from .units import KINDS, UnitSet, check_net, discover_units

SOLVERS = ("ddim",)  # one-step updates: a step is a function of x_t alone, so it can be checkpointed


@dataclass(frozen=True)
class PruneConfig:
    """EcoDiff pruning settings (Zhang et al. 2024); ``ratio`` is the share of prunable parameters to remove."""

    ratio: float
    num_steps: int | None = None  # sampling steps of the trajectory; None: the model's own (a student's), else 20
    solver: str = "ddim"
    grid: str = "logsnr"
    denoise_to_zero: bool = True  # the last step returns the x0 prediction (as evaluation does)
    iters: int = 100  # optimiser iterations on the mask logits
    batch: int = 4  # trajectories per step
    lr: float = 0.1  # Adam on the logits
    sparsity_weight: float = 5.0  # lambda: pull of the kept share towards 1 - ratio
    temperature: float = 2.0 / 3.0  # hard-concrete beta (Louizos et al. 2018)
    init: float = 3.0  # initial logit: gates start open (P(z > 0) ~ 0.99)
    hard_share: float = 0.25  # final share of iterations with straight-through binary gates
    checkpoint: bool = True  # time-step gradient checkpointing
    seed: int = 0
    guidance: float | None = None  # None: the Denoiser's own
    kinds: tuple[str, ...] = KINDS  # which unit kinds may be pruned: "res", "heads", "mlp"
    mlp_group: int = 8  # channels per DiT MLP unit
    progress: bool = True  # tqdm bar

    def __post_init__(self):
        check_ratio(self.ratio)
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps}: the trajectory needs at least 1 step (or None for the model's own)")
        if self.solver not in SOLVERS:
            raise ValueError(
                f"solver={self.solver!r}: the mask search differentiates one-step updates; use one of {SOLVERS} "
                "(the pruned model can then be sampled with any solver)"
            )
        for name in ("iters", "batch", "mlp_group"):
            if getattr(self, name) < 1:
                raise ValueError(f"PruneConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PruneConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.sparsity_weight < 0:
            raise ValueError(f"sparsity_weight={self.sparsity_weight} must be >= 0")
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"hard_share={self.hard_share} must lie in [0, 1]")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds={self.kinds}: choose one or more of {KINDS}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


@dataclass(frozen=True)
class MaskSearch:
    """What the search learned: the unit sets, their final logits (scores), and the loss history."""

    units: list[UnitSet]
    logits: list[Tensor]
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


# -- the trajectory ------------------------------------------------------------------------------


def time_grid(den: Denoiser, steps: int, grid: str = "logsnr", denoise_to_zero: bool = True) -> Tensor:
    """The descending grid ``solvers.sample`` uses for the same arguments (float64)."""
    return sampling_grid(den.schedule, steps, grid, denoise_to_zero)


def trajectory(
    den: Denoiser,
    x_T: Tensor,
    ts: Tensor,
    cond: Tensor | None = None,
    guidance: float | None = None,
    checkpoint: bool = False,
) -> Tensor:
    """The final sample of DDIM from standard noise ``x_T`` over ``ts``, differentiable.

    With ``checkpoint`` each step is one ``torch.utils.checkpoint`` segment (EcoDiff's time step
    gradient checkpointing): autograd keeps only the step's input x_t and recomputes the step in
    the backward pass.
    """
    ts = ts.to(x_T.device)
    model = Bound(den, cond, guidance)
    x = x_T * den.schedule.sigma(ts[0]).to(x_T.dtype)
    for t, s in pairwise(ts):
        if checkpoint and torch.is_grad_enabled():
            x = _checkpoint(ddim_step, model, x, t, s, use_reentrant=False)
        else:
            x = ddim_step(model, x, t, s)
    return x


def sample_shape(den: Denoiser) -> tuple[int, ...]:
    if den.sample_shape is not None:
        return den.sample_shape
    cfg = den.net.config
    return (cfg.in_channels, cfg.image_size, cfg.image_size)


def draw(den: Denoiser, batch: int, g: torch.Generator, device) -> tuple[Tensor, Tensor | None]:
    """Noise x_T (B, ...) and, for a class-conditional Denoiser, random labels (B,)."""
    x_T = torch.randn(batch, *sample_shape(den), generator=g).to(device)
    cond = torch.randint(0, den.num_classes, (batch,), generator=g).to(device) if den.num_classes > 0 else None
    return x_T, cond


def trajectory_loss(
    den: Denoiser,
    hooks: MaskHooks,
    gates: list[Tensor],
    x_T: Tensor,
    ts: Tensor,
    cond: Tensor | None,
    guidance: float | None,
    checkpoint: bool,
) -> tuple[Tensor, Tensor]:
    """(relative squared error of the masked trajectory's x_0 to the full one's, that x_0)."""
    hooks.set(None)
    with torch.no_grad():
        x_ref = trajectory(den, x_T, ts, cond, guidance)  # the full net: the target
    hooks.set(gates)
    x = trajectory(den, x_T, ts, cond, guidance, checkpoint=checkpoint)
    rec = (x - x_ref).square().mean() / x_ref.square().mean().clamp_min(1e-12)
    return rec, x


# -- the search ----------------------------------------------------------------------------------


def search_masks(den: Denoiser, config: PruneConfig) -> MaskSearch:
    """Train unit-mask logits on ``den`` (net weights frozen); ``den`` is left as it was."""
    from tqdm.auto import tqdm

    net = check_net(den.net)
    units = discover_units(net, config.kinds, config.mlp_group)
    if not units:
        raise ValueError(
            f"this {type(net).__name__} has no prunable units of kinds {config.kinds} (every layer has a "
            "single group / head); widen the net or allow other kinds"
        )
    steps = config.num_steps or den.card.student_steps or 20
    ts = time_grid(den, steps, config.grid, config.denoise_to_zero)
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(config.seed)
    masks = UnitMasks(units, config.init, config.temperature).to(device)
    opt = torch.optim.Adam(masks.parameters(), lr=config.lr)
    keep_target = 1.0 - config.ratio
    hard_from = round(config.iters * (1.0 - config.hard_share))

    was_training, flags = den.training, [p.requires_grad for p in net.parameters()]
    den.eval()  # no dropout, no CFG label dropout: the masked net must compute the target's function
    net.requires_grad_(False)  # only the mask logits learn
    hooks = attach_masks(net, units)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    try:
        bar = tqdm(range(config.iters), desc=f"prune r={config.ratio:g} N={steps}", disable=not config.progress)
        for it in bar:
            x_T, cond = draw(den, config.batch, g, device)
            gates = masks.gates(g)
            if it >= hard_from:  # straight-through: the hard cut forward, soft gradient backward
                plan, _ = plan_from_scores(units, [lg.detach() for lg in masks.logits], config.ratio)
                gates = straight_through(gates, plan_gates(units, plan, device))
            rec, _ = trajectory_loss(den, hooks, gates, x_T, ts, cond, config.guidance, config.checkpoint)
            kept = masks.kept_share()
            loss = rec + config.sparsity_weight * (kept - keep_target).square()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"iter": it, "loss": loss.item(), "rec": rec.item(), "kept": kept.item()})
            bar.set_postfix(rec=f"{history[-1]['rec']:.3g}", kept=f"{history[-1]['kept']:.2f}")
        bar.close()
    finally:
        hooks.remove()
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
        den.train(was_training)
    logits = [lg.detach().clone() for lg in masks.logits]
    return MaskSearch(units, logits, steps, time.perf_counter() - t0, history)
