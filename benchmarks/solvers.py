"""Training-free solvers vs diffusers' schedulers, same network, same noise, equal NFE.

    uv run python benchmarks/solvers.py [--quick]

For each shipped teacher: a 1000-step DPM-Solver++(2M) reference from fixed noise, then every
fewstep solver (log-SNR grid; the two best also on the other grids and an AutoDiffusion-searched
grid) and diffusers' DDIM / DPMSolverMultistep / UniPC / Euler / Heun schedulers driving the same
Denoiser, at NFE in {3, 4, 5, 6, 8, 10, 15, 20, 50}. Reports the mean RMS error to the reference,
dFD, accuracy, and the solver's own overhead per step (wall time outside the network). Writes
docs/benchmarks/solvers.md and docs/benchmarks/solvers.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, table  # noqa: E402
from diffusers_baseline import SCHEDULERS, nfe_to_steps, sample_diffusers  # noqa: E402

from fewstep.core.solvers import available, sample  # noqa: E402
from fewstep.core.tuning.autodiffusion import SearchConfig, autodiffusion_search, error_to_reference  # noqa: E402
from fewstep.image.quality import evaluate_samples  # noqa: E402
from fewstep.image.registry import load_model  # noqa: E402

NFES = (3, 4, 5, 6, 8, 10, 15, 20, 50)
# NFE per grid interval; every other solver spends one. An interval into t = 0 costs one NFE.
NFE_PER_STEP = {"heun": 2, "ts_heun": 2, "edm_sde": 2, "dpm_solver_2": 2, "dpm_solver_3": 3}
SKIP = {"dmcmc", "dpm_solver_1"}  # dpm_solver_1 is DDIM; DMCMC needs persistent chains (own tests)
GRID_SOLVERS = ("ddim", "dpmpp_2m", "unipc")  # also run on every grid


def steps_for(solver: str, nfe: int) -> int | None:
    """Grid intervals that spend exactly ``nfe`` evaluations when the last interval ends at 0."""
    per = NFE_PER_STEP.get(solver, 1)
    if solver == "tuned":  # stops early (its own grid), plus one final x0 call
        return nfe - 1 if 4 <= nfe - 1 <= 8 else None
    return (nfe - 1) // per + 1 if (nfe - 1) % per == 0 else None
GRIDS = ("uniform", "karras", "quadratic")


class NetTimer(torch.nn.Module):
    """Wraps a net and adds up the wall time spent inside it."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seconds = net, 0.0

    def forward(self, *a, **k):
        t0 = time.perf_counter()
        out = self.net(*a, **k)
        self.seconds += time.perf_counter() - t0
        return out


def run(den, fn, noise, labels, ref, dataset):
    timer = den.net
    timer.seconds = 0.0
    den.reset_counters()
    t0 = time.perf_counter()
    x = fn()
    wall = time.perf_counter() - t0
    nfe = den.nfe
    err = float((x.double() - ref).flatten(1).pow(2).mean(1).sqrt().mean())
    q = evaluate_samples(dataset, x.clamp(-1, 1), labels)
    overhead = (wall - timer.seconds) / max(1, nfe)
    return {"nfe": nfe, "error": err, "dfd": q.dfd, "accuracy": q.accuracy, "overhead_ms": overhead * 1e3, "net_ms": timer.seconds / max(1, nfe) * 1e3}


def bench_model(name: str, n: int, nfes, quick: bool, log, search_only: bool = False) -> list[dict]:
    den = load_model(name)
    den.net = NetTimer(den.net)
    dataset = den.card.provenance["dataset"]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, *den.sample_shape, generator=gen)
    labels = torch.arange(n) % den.num_classes
    t0 = time.perf_counter()
    ref = sample(den, noise, "dpmpp_2m", 200 if quick else 1000, "logsnr", cond=labels, denoise_to_zero=True).double()
    log(f"{name}: reference in {time.perf_counter() - t0:.0f} s")
    rows = []

    def add(family, solver, grid, k, fn):
        r = run(den, fn, noise, labels, ref, dataset)
        rows.append({"model": name, "family": family, "solver": solver, "grid": grid, "target_nfe": k, **r})
        log(f"{name} {family:9s} {solver:18s} {grid:9s} NFE {r['nfe']:3d} err {r['error']:.4f} dFD {r['dfd']:.3f}")

    solvers = [s for s in available() if s not in SKIP]
    for k in () if search_only else nfes:
        for s in solvers:
            steps = steps_for(s, k)
            if steps is None:
                continue
            grids = ("tuned",) if s == "tuned" else ("logsnr",) + (GRIDS if s in GRID_SOLVERS else ())
            for g in grids:
                add("fewstep", s, g, k, lambda s=s, g=g, steps=steps: sample(
                    den, noise, s, steps, g, cond=labels, generator=torch.Generator().manual_seed(1), denoise_to_zero=True))
        for sch in SCHEDULERS:
            steps = nfe_to_steps(sch, k)
            if steps:
                add("diffusers", sch, "default", k, lambda sch=sch, steps=steps: sample_diffusers(sch, den, noise, steps, labels))
    # AutoDiffusion: search on a different noise batch (scored by error to its own reference), evaluate here.
    search_noise = torch.randn(min(n, 128), *den.sample_shape, generator=torch.Generator().manual_seed(99))
    search_labels = torch.arange(len(search_noise)) % den.num_classes
    search_ref = sample(den, search_noise, "dpmpp_2m", 200, "logsnr", cond=search_labels, denoise_to_zero=True)
    for k in (3, 4, 5) if not quick else (4,):
        # k searched intervals ending at t = 0 (final_zero): k NFE, like the rows above.
        cfg = SearchConfig(num_steps=k, population=12, iterations=4 if quick else 8, seed=0)
        res = autodiffusion_search(den, search_noise, error_to_reference(search_ref), "dpmpp_2m", cfg, cond=search_labels, progress=False, final_zero=True)
        add("fewstep", "dpmpp_2m", "searched", k, lambda res=res: sample(den, noise, "dpmpp_2m", k, res.grid, cond=labels))
    return rows


def best(rows, model, family, k, key):
    cand = [r for r in rows if r["model"] == model and r["family"] == family and r["nfe"] == k]
    return min(cand, key=lambda r: r[key]) if cand else None


def write(rows, args, seconds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for fam, style in (("fewstep", "-"), ("diffusers", "--")):
            ks = sorted({r["nfe"] for r in rows if r["model"] == m and r["family"] == fam})
            pts = [(k, best(rows, m, fam, k, "error")["error"]) for k in ks]
            ax.plot(*zip(*pts), style, marker="o", label=f"best {fam}")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="RMS error to 1000-step reference", title=m)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "solvers.png", dpi=110)

    out = [
        "# Solvers: fewstep vs diffusers at equal NFE",
        "",
        f"`uv run python benchmarks/solvers.py{' --quick' if args.quick else ''}` on {machine()}, {seconds / 60:.0f} min. "
        f"n = {args.n} fixed class-balanced noises per teacher (digits), {args.n_shapes} (shapes), no guidance. "
        "Error: mean over samples of the RMS distance to a "
        f"{200 if args.quick else 1000}-step DPM-Solver++(2M) solution of the same noise. dFD on the shipped classifier's "
        "features vs the real test split. diffusers' schedulers drive the same Denoiser (same net, same x0 clipping) "
        "through their own `step()` loop; fewstep solvers also finish with a step to t = 0 (`denoise_to_zero=True`). "
        "Overhead: wall time per NFE outside the network.",
        "",
        "## Best of each family at each NFE",
        "",
    ]
    head = ["model", "NFE", "best fewstep (error)", "error", "best diffusers (error)", "error", "best fewstep dFD", "best diffusers dFD"]
    summary = []
    for m in models:
        for k in sorted({r["nfe"] for r in rows if r["model"] == m}):
            f, d = best(rows, m, "fewstep", k, "error"), best(rows, m, "diffusers", k, "error")
            fd, dd = best(rows, m, "fewstep", k, "dfd"), best(rows, m, "diffusers", k, "dfd")
            if f and d:
                summary.append([m, k, f"{f['solver']}/{f['grid']}", f["error"], d["solver"], d["error"], f"{fd['dfd']:.3f} ({fd['solver']}/{fd['grid']})", f"{dd['dfd']:.3f} ({dd['solver']})"])
    out += [table(head, summary), "", "![best error vs NFE](solvers.png)", "", "## Every run", ""]
    head = ["model", "family", "solver", "grid", "NFE", "error", "dFD", "accuracy", "overhead ms/NFE", "net ms/NFE"]
    out.append(table(head, [[r["model"], r["family"], r["solver"], r["grid"], r["nfe"], r["error"], r["dfd"], r["accuracy"], r["overhead_ms"], r["net_ms"]] for r in rows]))
    (DOCS / "solvers.md").write_text("\n".join(out) + "\n")
    (DOCS / "solvers.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--n-shapes", type=int, default=240)
    p.add_argument("--quick", action="store_true", help="few NFEs and a 200-step reference (smoke run)")
    p.add_argument("--models", default="digits-teacher,shapes-teacher")
    p.add_argument("--search-only", action="store_true", help="re-run only the AutoDiffusion rows")
    args = p.parse_args()
    nfes = (4, 8) if args.quick else NFES
    t0 = time.perf_counter()
    rows = []
    for m in args.models.split(","):
        rows += bench_model(m, args.n if m.startswith("digits") else args.n_shapes, nfes, args.quick, lambda s: print(s, flush=True), args.search_only)
    DOCS.mkdir(parents=True, exist_ok=True)
    old = DOCS / "solvers.json"
    if old.is_file():  # keep earlier rows that this run did not redo (one model at a time on a CPU)
        redone = {(r["model"], r["grid"] == "searched") for r in rows}
        rows = [r for r in json.loads(old.read_text()) if (r["model"], r["grid"] == "searched") not in redone] + rows
    write(rows, args, time.perf_counter() - t0)
    print(f"wrote {DOCS / 'solvers.md'}")


if __name__ == "__main__":
    main()
