"""The one list of solvers: ``SOLVERS[name]`` is a :class:`SolverSpec` (function, order, cost, paper).

CLIs (``fewstep info``), the docs table, NFE accounting (:meth:`SolverSpec.nfe`) and the solver
contract tests read this mapping; nothing else lists solvers. Adding a sampler is adding one
function in its family's file and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from .arcflow import sample_arcflow
from .boot import sample_boot
from .consistency import sample_consistency
from .dmcmc import sample_dmcmc
from .edm import sample_edm_sde, sample_euler
from .first_order import sample_ddim
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from .second_order import sample_heun
from .singlestep import sample_dpm_solver
from .time_shift import time_shift
from .tuned import sample_tuned, sample_tuned_sde
from .unipc import sample_unipc

SolverFn = Callable[..., Tensor]  # fn(model, x, ts, **options) -> x at ts[-1]


@dataclass(frozen=True)
class SolverSpec:
    """What a solver is and what it costs.

    ``order``: global order of convergence to the probability-flow ODE solution on a smooth problem
    (None where the method is not a consistent ODE integrator: students' own samplers, MCMC, time
    shift and truncation by design). ``evals_per_step``: network evaluations per grid interval;
    an interval that ends at t = 0 is a single denoising call (``common.py``). ``final_call``: one
    more evaluation at the end when the solver finishes itself (``own_finish``) and is asked to
    denoise to zero. ``fixed_nfe``: the whole solve costs this many evaluations, whatever the grid.
    """

    name: str
    fn: SolverFn
    paper: str
    order: int | None
    multistep: bool = False
    stochastic: bool = False  # takes a ``generator``; draws fresh noise during sampling
    evals_per_step: int = 1
    student_only: bool = False  # samples only students trained for it (their nets predict something else)
    own_finish: bool = False  # stops early by design; denoise_to_zero is its own final x0 call
    fixed_nfe: int | None = None
    extra_nfe: Callable[[Mapping[str, Any]], int] | None = None  # evaluations beyond the grid's, from options
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed options (variants of one function)

    def __post_init__(self):
        if self.order is not None and self.order < 1:
            raise ValueError(f"{self.name}: order must be >= 1 or None")
        if self.evals_per_step < 1:
            raise ValueError(f"{self.name}: evals_per_step must be >= 1")

    def __call__(self, model, x: Tensor, ts: Tensor, **opts) -> Tensor:
        return self.fn(model, x, ts, **{**self.options, **opts})

    def nfe(self, num_steps: int, to_zero: bool = False, **opts) -> int:
        """Network evaluations (Denoiser calls) for ``num_steps`` grid intervals, ``to_zero`` when
        the grid ends at t = 0 (``sample(..., denoise_to_zero=True)``)."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps}: sampling needs at least 1 step")
        if self.fixed_nfe is not None:
            return self.fixed_nfe
        n = self.evals_per_step * num_steps
        if to_zero and self.own_finish:
            n += 1
        elif to_zero:
            n -= self.evals_per_step - 1  # the last interval is one denoising call
        return n + (self.extra_nfe({**self.options, **opts}) if self.extra_nfe else 0)


def _dmcmc_sweeps(opts: Mapping[str, Any]) -> int:
    """DLG sweeps: one evaluation each, two with a Gibbs step on the noise level (Kim & Ye 2022)."""
    return int(opts.get("n_mcmc", 2)) * (1 + bool(opts.get("gibbs_sigma", False)))


_SPECS = [
    SolverSpec("ddim", sample_ddim, "Song et al. 2021, DDIM, Eq. 12", order=1),
    SolverSpec("ddpm", sample_ddim, "Ho et al. 2020, DDPM (DDIM with eta = 1)", order=None, stochastic=True, options={"eta": 1.0}),
    SolverSpec("heun", sample_heun, "Karras et al. 2022, EDM, Alg. 1", order=2, evals_per_step=2),
    *(
        SolverSpec(f"dpm_solver_{k}", sample_dpm_solver, "Lu et al. 2022, DPM-Solver, Alg. 1-2", order=k, evals_per_step=k, options={"order": k})
        for k in (1, 2, 3)
    ),
    SolverSpec("dpmpp_2m", sample_dpmpp_2m, "Lu et al. 2022b, DPM-Solver++(2M), Alg. 2", order=2, multistep=True),
    SolverSpec("dpmpp_3m", sample_dpmpp_3m, "Lu et al. 2022b, DPM-Solver++(3M)", order=3, multistep=True),
    SolverSpec("dpmpp_2m_sde", sample_dpmpp_2m_sde, "Lu et al. 2022b, SDE-DPM-Solver++(2M)", order=None, multistep=True, stochastic=True),
    *(
        SolverSpec(name, sample_unipc, "Zhao et al. 2023, UniPC (UniP-2 + UniC-2)", order=3, multistep=True, options={"variant": v})
        for name, v in (("unipc_bh1", "bh1"), ("unipc_bh2", "bh2"), ("unipc", "bh2"))
    ),
    SolverSpec("euler", sample_euler, "Karras et al. 2022, EDM, Alg. 1 (Euler)", order=1),
    SolverSpec("edm_sde", sample_edm_sde, "Karras et al. 2022, EDM, Alg. 2 (stochastic)", order=None, stochastic=True, evals_per_step=2),
    SolverSpec("ts_ddim", time_shift(sample_ddim), "Li et al. 2024, Time-Shift Sampler (TS-DDIM)", order=None),
    SolverSpec("ts_heun", time_shift(sample_heun), "Li et al. 2024, Time-Shift Sampler (around Heun)", order=None, evals_per_step=2),
    SolverSpec("tuned", sample_tuned, "Li 2025, Hyperparameters are all you need", order=None, own_finish=True),
    SolverSpec("tuned_sde", sample_tuned_sde, "Li 2025, Hyperparameters are all you need (SDE)", order=None, stochastic=True, own_finish=True),
    SolverSpec("dmcmc", sample_dmcmc, "Kim & Ye 2022, Denoising MCMC", order=None, multistep=True, stochastic=True, extra_nfe=_dmcmc_sweeps),
    SolverSpec("consistency", sample_consistency, "Song et al. 2023, Consistency Models, Alg. 1", order=None, stochastic=True),
    SolverSpec("boot", sample_boot, "Gu et al. 2023, BOOT", order=None, student_only=True, fixed_nfe=1),
    SolverSpec("arcflow", sample_arcflow, "Yang et al. 2026, ArcFlow (arXiv:2602.09014)", order=None, student_only=True),
]

SOLVERS: Mapping[str, SolverSpec] = MappingProxyType({s.name: s for s in _SPECS})


def describe_cost(spec: SolverSpec) -> str:
    """NFE for N steps, in words (the docs table and ``fewstep info``)."""
    if spec.fixed_nfe is not None:
        return f"{spec.fixed_nfe} in all"
    k = spec.evals_per_step
    cost = "N" if k == 1 else f"{k}N ({k}N - {k - 1} into t = 0)"
    if spec.own_finish:
        cost += " (+1 into t = 0)"
    if spec.extra_nfe is not None:
        cost += " + sweeps"
    return cost


def markdown_table() -> str:
    """The solver table of docs/solvers.md, generated from SOLVERS (a test keeps the docs equal to it)."""
    rows = ["| name | paper | NFE for N steps | order | multistep | stochastic |", "|---|---|---|---|---|---|"]
    for spec in SOLVERS.values():
        order = "-" if spec.order is None else str(spec.order)
        note = " (students only)" if spec.student_only else ""
        rows.append(
            f"| `{spec.name}`{note} | {spec.paper} | {describe_cost(spec)} | {order} | "
            f"{'yes' if spec.multistep else 'no'} | {'yes' if spec.stochastic else 'no'} |"
        )
    return "\n".join(rows)


def solver_spec(name: str) -> SolverSpec:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


__all__ = ["SOLVERS", "SolverFn", "SolverSpec", "describe_cost", "markdown_table", "solver_spec"]
