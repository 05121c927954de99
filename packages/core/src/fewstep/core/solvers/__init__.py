"""Training-free samplers: pure functions over a Denoiser and a descending time grid.

``sample(denoiser, x_T, solver=..., num_steps=..., grid=...)`` is the one entry point; each solver is
a short function ``sample_<name>(model, x, ts, **opts)`` where ``model(x, t)`` returns x0, listed
once in ``SOLVERS`` (``specs.py``) with its order, cost and paper. ``num_steps`` counts grid
intervals; ``SOLVERS[name].nfe(num_steps)`` is what a solve spends. Search and tuning of grids and
samplers (AutoDiffusion, DiSA, DPM-OT) live in ``fewstep.core.tuning``, which imports this package.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .common import check_grid
from .consistency import sample_consistency
from .first_order import ddim_step, sample_ddim
from .grids import GRIDS, make_grid
from .specs import SOLVERS, SolverSpec, solver_spec

DEFAULT_SOLVER, DEFAULT_NUM_STEPS = "dpmpp_2m", 20


def available() -> list[str]:
    """Names accepted by :func:`sample` ("auto" picks a student's own rule, else dpmpp_2m)."""
    return sorted(SOLVERS)


def resolve_rule(
    denoiser: Denoiser, solver: str = "auto", num_steps: int | None = None, grid=None
) -> tuple[SolverSpec, int, str | os.PathLike | Tensor, dict]:
    """(solver spec, num_steps, grid, options) that ``sample`` will use.

    ``solver="auto"`` takes a distilled student's own rule (``denoiser.card.sampler``: its solver,
    its trained grid and options) and otherwise DPM-Solver++(2M) with 20 logSNR steps. A student's
    trained grid is used when neither ``num_steps`` nor ``grid`` asks for something else.
    """
    card = denoiser.card
    opts: dict = {}
    if solver == "auto":
        rule = card.sampler
        solver = rule.solver if rule else DEFAULT_SOLVER
        if rule is not None:
            opts = dict(rule.options)
            own = num_steps is None or num_steps == card.student_steps
            if grid is None and rule.grid is not None and own:
                grid = torch.tensor(rule.grid, dtype=torch.float64) if isinstance(rule.grid, tuple) else rule.grid
    spec = solver_spec(solver)
    if num_steps is None:
        num_steps = card.student_steps or DEFAULT_NUM_STEPS
    if grid is None:
        grid = "tuned" if spec.own_finish else "logsnr"  # Li 2025's recipe is a grid and a solver together
    return spec, num_steps, grid, opts


class Bound:
    """Binds conditioning and guidance so solvers see ``model(x, t) -> x0``."""

    def __init__(self, denoiser: Denoiser, cond, guidance, solver: str = ""):
        self.denoiser, self.cond, self.guidance = denoiser, cond, guidance
        self.schedule = denoiser.schedule
        self.solver = solver
        self.finite: list[tuple[Tensor, Tensor | float]] = []  # per call: (prediction finite?, t), no device sync

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.denoiser(x, t, self.cond, self.guidance)
        self.finite.append((torch.isfinite(out).all(), t))
        return out

    def first_non_finite(self) -> str | None:
        """Where the first NaN/inf prediction came from (read once, after the solve)."""
        if not self.finite:
            return None
        ok = torch.stack([f for f, _ in self.finite]).cpu()
        if bool(ok.all()):
            return None
        k = int((~ok).nonzero()[0])
        t = self.finite[k][1]
        tv = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        return f"the model's prediction is first NaN/inf at network evaluation {k + 1} (t={tv:.4g})"


def sampling_grid(schedule, num_steps: int, grid: str | os.PathLike | Tensor = "logsnr", denoise_to_zero: bool = False) -> Tensor:
    """The checked, descending time grid ``sample`` integrates over (float64, on the CPU).

    With ``denoise_to_zero`` a named grid's last time becomes 0 and an explicit grid gets 0 appended.
    """
    ts = check_grid(schedule, make_grid(schedule, num_steps, grid))
    if denoise_to_zero and float(ts[-1]) != 0.0:
        zero = ts.new_zeros(1)
        ts = torch.cat([ts, zero]) if isinstance(grid, Tensor) else torch.cat([ts[:-1], zero])
    return ts


@torch.no_grad()
def _check_trained_guidance(denoiser: Denoiser, guidance: float | None) -> None:
    """A guidance-input student (guided distillation) knows only the scales it was trained on."""
    card = getattr(denoiser, "card", None)  # wrappers (time-series observation guidance) carry none
    if card is None or not getattr(denoiser, "guidance_embedded", False):
        return
    rng = card.provenance.get("guidance_range")
    w = denoiser.guidance if guidance is None else guidance
    if rng is not None and not rng[0] - 1e-9 <= float(w) <= rng[1] + 1e-9:
        raise ValueError(f"guidance={w}: this student takes the CFG scale as an input and was trained for w in "
                         f"[{rng[0]:g}, {rng[1]:g}] (its default is {denoiser.guidance:g}); pick a scale in that range")


def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    solver: str = "auto",
    num_steps: int | None = None,
    grid: str | os.PathLike | Tensor | None = None,
    cond: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    denoise_to_zero: bool = False,
    **opts,
) -> Tensor:
    """Integrate from standard Gaussian noise ``x_T`` (scaled here by sigma(t_0)) to data.

    ``grid`` is a named grid with ``num_steps`` intervals from t_max to t_min, or an explicit
    descending tensor of times in [t_min, t_max] that may end with 0 (then ``num_steps`` is
    ignored). With ``denoise_to_zero`` the last time of a named grid becomes 0, so the last step
    returns the x0 prediction at t_{N-1} (diffusers' ``final_sigmas_type="zero"``; same NFE); an
    explicit grid gets a 0 appended. Returns the sample at the grid's last time (t_min, where sigma
    is ~1e-2 or less, or exactly 0). ``solver="auto"`` (default) samples a distilled student with
    its own rule and step count, and anything else with dpmpp_2m at 20 steps (see
    :func:`resolve_rule`). NFE spent: ``SOLVERS[solver].nfe(num_steps, denoise_to_zero)``.
    """
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor of standard Gaussian noise, got {type(x_T).__name__}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T holds NaN or inf: sampling starts from finite standard Gaussian noise")
    _check_trained_guidance(denoiser, guidance)
    spec, num_steps, grid, rule_opts = resolve_rule(denoiser, solver, num_steps, grid)
    opts = {**rule_opts, **opts}
    if spec.own_finish:
        opts["denoise_to_zero"] = denoise_to_zero
    ts = sampling_grid(denoiser.schedule, num_steps, grid, denoise_to_zero and not spec.own_finish)
    ts = ts.to(x_T.device)
    model = Bound(denoiser, cond, guidance, spec.name)
    x = x_T * denoiser.schedule.sigma(ts[0]).to(x_T.dtype)
    if spec.stochastic:
        opts["generator"] = generator
    was_training = denoiser.training
    denoiser.eval()  # sampling is inference: guidance and x0 clipping apply, dropout does not
    try:
        x = spec(model, x, ts, **opts).to(x_T.dtype)
    finally:
        denoiser.train(was_training)
    if not bool(torch.isfinite(x).all()):
        where = model.first_non_finite()
        if where:
            raise FloatingPointError(f"{spec.name}: {where}; try more steps, another solver, or check the weights")
        raise FloatingPointError(
            f"{spec.name} produced NaN/inf after {len(ts) - 1} steps (grid {ts[0].item():.4g} -> {ts[-1].item():.4g}): "
            f"the model's outputs are not finite there; try more steps, another solver, or check the weights"
        )
    return x


__all__ = [
    "GRIDS",
    "SOLVERS",
    "SolverSpec",
    "available",
    "resolve_rule",
    "ddim_step",
    "sample_ddim",
    "sample_consistency",
    "check_grid",
    "make_grid",
    "sample",
    "sampling_grid",
    "solver_spec",
    "Bound",
]
