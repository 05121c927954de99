"""Searched time grids: AutoDiffusion's evolutionary search over time-step sequences (files: solvers/grid_files).

Li et al. 2023, "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures" (method):
a candidate is a strictly decreasing sequence t_max = t_0 > t_1 > ... > t_N = t_min with a fixed
number of steps N (a fixed NFE for a given solver); its fitness is a cheap sample metric (the paper
uses FID; here any ``score(samples) -> float``, lower is better) on one fixed batch of noise. Each
generation keeps the top-k, and makes children by crossover (a random subset of the union of two
parents' times) and mutation (each interior time moved with probability ``mutate_prob``). The
paper's second stage (architecture/layer-skipping search) is not done here.

Genes are the N - 1 interior times; endpoints stay fixed. Mutations act in lambda = log(alpha/sigma),
so one search works for VP, VE/EDM and flow schedules alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..schedules import Schedule
from ..solvers import sample
from ..solvers.grids import make_grid

BASELINE_GRIDS = ("uniform", "logsnr", "karras", "quadratic")  # seeds of the initial population

ScoreFn = Callable[[Tensor], float]


@dataclass(frozen=True)
class SearchConfig:
    """AutoDiffusion search settings (Li et al. 2023, evolutionary search)."""

    num_steps: int  # N intervals, the fixed budget; NFE = N for one-evaluation-per-step solvers
    population: int = 16  # candidates per generation
    iterations: int = 10  # generations after the initial population
    topk: int = 4  # parents kept (elitism) and bred each generation
    mutate_prob: float = 0.3  # chance that a mutation moves each interior time
    crossover: float = 0.5  # share of children made by crossover (the rest by mutation)
    seed: int = 0  # the search's own randomness (mutation, crossover), and a stochastic solver's

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps}: a grid needs at least 1 step")
        if self.population < 2:
            raise ValueError(f"population={self.population}: need at least 2 candidates")
        if not 1 <= self.topk <= self.population:
            raise ValueError(f"topk={self.topk} must be in [1, population={self.population}]")
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations} must be >= 0")
        if not 0.0 < self.mutate_prob <= 1.0:
            raise ValueError(f"mutate_prob={self.mutate_prob} must be in (0, 1]")
        if not 0.0 <= self.crossover <= 1.0:
            raise ValueError(f"crossover={self.crossover} must be in [0, 1]")


@dataclass(frozen=True)
class SearchResult:
    """The best grid found, its score, the named grids' scores, and per-generation history."""

    grid: Tensor  # (N + 1,) float64, descending
    score: float
    baselines: dict[str, float]  # score of each named grid on the same noise
    history: list[dict[str, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # what save_searched_grid records


def error_to_reference(reference: Tensor) -> ScoreFn:
    """Score = RMS error to a reference solution of the same noise (e.g. a 100-step solve)."""
    ref = reference.detach()

    def score(x: Tensor) -> float:
        return float((x.to(ref.dtype) - ref).square().mean().sqrt())

    return score


# -- genetic operators on interior times ---------------------------------------------------------


def _key(t: Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t)


def _valid(t: Tensor, lo: float, hi: float) -> bool:
    """Interior times strictly decreasing and strictly inside (t_min, t_max)."""
    return bool((t[1:] < t[:-1]).all()) and (t.numel() == 0 or (float(t[0]) < hi and float(t[-1]) > lo))


def _random_genes(schedule: Schedule, n: int, g: torch.Generator) -> Tensor:
    """n interior times drawn uniformly in lambda between the endpoints, sorted descending in t."""
    lam_a, lam_b = float(schedule.lambda_(schedule.t_max)), float(schedule.lambda_(schedule.t_min))
    lam = lam_a + (lam_b - lam_a) * torch.rand(n, generator=g, dtype=torch.float64)
    return schedule.inverse_lambda(lam.sort().values)


def _mutate(schedule: Schedule, genes: Tensor, p: float, g: torch.Generator) -> Tensor:
    """Move each interior time with probability p, within its neighbours' lambda interval.

    Half of the moves resample uniformly between the neighbours (exploration), half jitter by a
    tenth of that interval (refinement); at least one gene always moves.
    """
    t = genes.clone()
    n = t.numel()
    moved = torch.rand(n, generator=g) < p
    if not bool(moved.any()):
        moved[int(torch.randint(n, (1,), generator=g))] = True
    for i in torch.nonzero(moved).flatten().tolist():
        t_hi = schedule.t_max if i == 0 else float(t[i - 1])
        t_lo = schedule.t_min if i == n - 1 else float(t[i + 1])
        lam_a, lam_b = float(schedule.lambda_(t_hi)), float(schedule.lambda_(t_lo))
        if float(torch.rand(1, generator=g)) < 0.5:
            lam = lam_a + (lam_b - lam_a) * float(torch.rand(1, generator=g))
        else:
            lam = float(schedule.lambda_(t[i])) + 0.1 * (lam_b - lam_a) * float(torch.randn(1, generator=g))
            lam = min(max(lam, lam_a + 1e-3 * (lam_b - lam_a)), lam_b - 1e-3 * (lam_b - lam_a))
        t[i] = schedule.inverse_lambda(torch.tensor(lam, dtype=torch.float64))
    return t


def _crossover(a: Tensor, b: Tensor, g: torch.Generator) -> Tensor:
    """A child takes a random subset of the union of its parents' interior times."""
    pool = torch.unique(torch.cat([a, b]))
    pick = torch.randperm(pool.numel(), generator=g)[: a.numel()]
    return pool[pick].sort(descending=True).values


# -- the search ----------------------------------------------------------------------------------


def autodiffusion_search(
    denoiser,
    noise: Tensor,
    score_fn: ScoreFn,
    solver: str = "dpmpp_2m",
    config: SearchConfig | None = None,
    cond: Tensor | None = None,
    guidance: float | None = None,
    progress: bool = True,
    final_zero: bool = False,
    **solver_opts,
) -> SearchResult:
    """AutoDiffusion time-step search (Li et al. 2023, time-step stage) for one solver and N.

    ``noise`` is a fixed batch of standard Gaussian noise (the same for every candidate); the
    named grids seed the population and the best is kept, so the result never scores worse than
    uniform/logSNR/Karras/quadratic on this batch. With ``final_zero`` every candidate ends at
    t = 0 instead of t_min (the last step returns the x0 prediction, as ``denoise_to_zero`` does),
    so all ``num_steps`` evaluations are spent on the searched times.
    """
    from tqdm.auto import tqdm


    cfg = config if config is not None else SearchConfig(num_steps=10)
    schedule = denoiser.schedule
    lo, hi = schedule.t_min, schedule.t_max
    g = torch.Generator().manual_seed(cfg.seed)
    cache: dict[tuple[float, ...], float] = {}

    end = 0.0 if final_zero else lo

    def grid_of(genes: Tensor) -> Tensor:
        return torch.cat([torch.tensor([hi], dtype=torch.float64), genes, torch.tensor([end], dtype=torch.float64)])

    def fitness(genes: Tensor) -> float:
        k = _key(genes)
        if k not in cache:
            gen = torch.Generator().manual_seed(cfg.seed)  # same draws for every candidate (CPU, as solvers draw)
            x = sample(denoiser, noise, solver, cfg.num_steps, grid_of(genes), cond, guidance, gen, **solver_opts)
            s = float(score_fn(x))
            cache[k] = s if math.isfinite(s) else math.inf
        return cache[k]

    # Initial population: the named grids, then random grids in lambda.
    named = {name: make_grid(schedule, cfg.num_steps, name)[1:-1] for name in BASELINE_GRIDS}
    baselines = {name: fitness(genes) for name, genes in named.items()}
    n_genes = cfg.num_steps - 1
    population = list({_key(v): v for v in named.values()}.values())
    tries = 0
    while len(population) < max(cfg.population, len(named)) and n_genes > 0 and tries < 100 * cfg.population:
        tries += 1
        cand = _random_genes(schedule, n_genes, g)
        if _valid(cand, lo, hi) and _key(cand) not in {_key(p) for p in population}:
            population.append(cand)

    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.iterations), desc=f"autodiffusion {solver} N={cfg.num_steps}", disable=not progress)
    ranked = sorted(population, key=fitness)
    history.append({"iteration": 0, "best": fitness(ranked[0]), "evaluated": len(cache)})
    for it in bar:
        if n_genes == 0:
            break
        parents = ranked[: cfg.topk]
        children: list[Tensor] = []
        seen = {_key(p) for p in parents}
        n_cross = round(cfg.crossover * (cfg.population - len(parents)))
        tries = 0
        while len(parents) + len(children) < cfg.population and tries < 100 * cfg.population:
            tries += 1
            if len(children) < n_cross and len(parents) > 1:
                i, j = torch.randperm(len(parents), generator=g)[:2].tolist()
                child = _crossover(parents[i], parents[j], g)
                if float(torch.rand(1, generator=g)) < 0.5:  # a crossover child also mutates, sometimes
                    child = _mutate(schedule, child, cfg.mutate_prob, g)
            else:
                parent = parents[int(torch.randint(len(parents), (1,), generator=g))]
                child = _mutate(schedule, parent, cfg.mutate_prob, g)
            if _valid(child, lo, hi) and _key(child) not in seen:
                seen.add(_key(child))
                children.append(child)
        ranked = sorted(parents + children, key=fitness)
        best = fitness(ranked[0])
        history.append({"iteration": it + 1, "best": best, "evaluated": len(cache)})
        bar.set_postfix(best=f"{best:.4g}")
    bar.close()

    best_genes = ranked[0]
    meta = {
        "schedule": schedule.to_dict(),
        "solver": solver,
        "steps": cfg.num_steps,
        "final_zero": final_zero,
        "score": fitness(best_genes),
        "baselines": baselines,
        "search": {"population": cfg.population, "iterations": cfg.iterations, "topk": cfg.topk, "seed": cfg.seed},
    }
    return SearchResult(grid_of(best_genes), fitness(best_genes), baselines, history, meta)
