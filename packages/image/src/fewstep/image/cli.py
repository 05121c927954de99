"""``fewstep-image``: list, evaluate, retrain and demo the image models (thin: parse and call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fewstep.core import checks
from fewstep.core.cli_support import friendly, output_lock, restart_option, save_every_option, written

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fewstep for images.")


@app.command()
@friendly
def models() -> None:
    """List the shipped models with a one-line summary from their cards."""
    from .registry import shipped_names, summary

    for name in shipped_names():
        typer.echo(f"{name:24s} {summary(name)}")


@app.command()
@friendly
def evaluate(
    model: str = typer.Argument(..., help="shipped name (see `models`) or checkpoint path"),
    solver: str = typer.Option("auto", help="sampler; `fewstep info` lists them (auto: a distilled student's own rule, else dpmpp_2m)"),
    steps: Optional[int] = typer.Option(None, "--num-steps", parser=checks.count(1, 10_000), help="sampling steps (default: the model's own, else 20)"),
    grid: Optional[str] = typer.Option(None, help="time grid: uniform, logsnr, karras, quadratic, tuned, or a searched grid .json (default: the student's trained grid, else logsnr)"),
    n: int = typer.Option(500, "--n", parser=checks.count(20, 1_000_000), help="number of samples (>= 20 for a meaningful dFD)"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    guidance: Optional[float] = typer.Option(None, parser=checks.real(0, 50), help="classifier-free guidance scale (1 = none, 0 = unconditional; default: the model's own, 1 for teachers, the trained default for guided students)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Sample a model and print dFD, KID, precision/recall, density/coverage, accuracy and per-class FD, each with its 95% interval, NFE and seconds per sample."""
    from .evaluate import EvalConfig, evaluate_denoiser
    from .registry import load_model

    den = load_model(model)
    cfg = EvalConfig(solver=solver, num_steps=steps, grid=grid, n=n, seed=seed, guidance=guidance)
    r = evaluate_denoiser(den, cfg)
    if as_json:
        typer.echo(json.dumps({"model": model, **r}))
        return
    from fewstep.core.intervals import Metric

    figs = " | ".join(f"{k} {Metric.from_dict(m).format()}" for k, m in r["metrics"].items())
    typer.echo(f"{model}: {r['solver']} {r['steps']} steps, n = {n} (95% intervals) | {figs} | NFE {r['nfe']:.0f} | "
               f"{r['seconds_per_sample'] * 1e3:.2f} ms/sample")


@app.command("train-teacher")
@friendly
def train_teacher_cmd(
    dataset: str = typer.Argument(..., help="digits, shapes or photos"),
    out: Path = typer.Option(..., help="checkpoint stem to write (out.safetensors + out.json)"),
    steps: Optional[int] = typer.Option(None, "--iterations", parser=checks.count(1), help="training iterations (default: the shipped recipe's)"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    work_dir: Optional[Path] = typer.Option(None, help="checkpoints for resume (default: OUT.work)"),
    strategy: str = typer.Option("ddp", help="under torchrun: ddp (replicate) or fsdp (shard, FSDP2); see docs/scale.md"),
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
) -> None:
    """Retrain a teacher from scratch with the shipped recipe; resumes if interrupted (Ctrl-C or SIGTERM saves first).

    Scale out with: torchrun --nproc-per-node N $(which fewstep-image) train-teacher ... [--strategy fsdp]
    """
    from fewstep.core.io import checkpoint_stem

    from .teachers import train_teacher

    out = checkpoint_stem(out)
    with output_lock(out):
        train_teacher(dataset, out, work_dir=work_dir, steps=steps, seed=seed, strategy=strategy,
                      save_every=checks.parse_save_every(save_every), resume=not restart)
    typer.echo(f"saved {written(out)}")


@app.command("train-classifier")
@friendly
def train_classifier_cmd(
    dataset: str = typer.Argument(..., help="digits, shapes or photos"),
    out: Optional[Path] = typer.Option(None, help="checkpoint stem (default: the shipped location)"),
    iterations: Optional[int] = typer.Option(None, "--iterations", parser=checks.count(1), help="training iterations (default: the shipped recipe's)"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    work_dir: Optional[Path] = typer.Option(None, help="checkpoints for resume (default: OUT.work)"),
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
    role: str = typer.Option("eval", help="eval: the net that defines dFD (never given to a method); reward: the net methods may "
                                           "optimise, trained on the other half of the train split (seed 1 unless --seed)"),
) -> None:
    """Retrain a dataset's evaluation classifier (dFD features) or its reward classifier; resumes if interrupted."""
    from fewstep.core.io import checkpoint_stem

    from .classifier import REWARD_RECIPE, classifier_path, retrain_classifier

    out = checkpoint_stem(out or classifier_path(dataset, role))
    if role == "reward" and seed == 0:
        seed = REWARD_RECIPE["seed"]
    with output_lock(out):
        made = retrain_classifier(dataset, out, iterations=iterations, seed=seed, work_dir=work_dir, role=role,
                                  save_every=checks.parse_save_every(save_every), resume=not restart)
    typer.echo(f"test accuracy {made['test_accuracy']:.4f}; saved {written(out)}")


@app.command("search-grid")
@friendly
def search_grid_cmd(
    model: str = typer.Argument(..., help="shipped name or checkpoint path"),
    steps: int = typer.Option(4, "--num-steps", parser=checks.count(1, 1000), help="sampling steps of the grid (its NFE budget)"),
    solver: str = typer.Option("dpmpp_2m"),
    metric: str = typer.Option("proxy_fd", help="proxy_fd (FD in the reward classifier's features to the train split; dFD "
                                                "itself is never a search target), or error (to a 100-step solve of the same noise)"),
    n: int = typer.Option(250, "--n", parser=checks.count(20, 100_000), help="fixed noise batch the candidates are scored on"),
    population: int = typer.Option(16, parser=checks.count(2, 10_000), help="candidate grids per generation"),
    iterations: int = typer.Option(10, "--iterations", parser=checks.count(1, 100_000), help="generations of the search"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    out: Path = typer.Option(..., help="where to save the grid (.json); use it with --grid FILE"),
) -> None:
    """AutoDiffusion: evolutionary search of the time steps for a given NFE budget."""
    from fewstep.core.tuning.autodiffusion import SearchConfig

    from .grid_search import search_grid
    from .registry import load_model

    cfg = SearchConfig(num_steps=steps, population=population, iterations=iterations, seed=seed)
    with output_lock(out):
        r = search_grid(load_model(model), cfg, solver=solver, n=n, metric=metric, out=out)
    base = ", ".join(f"{k} {v:.4g}" for k, v in r.baselines.items())
    typer.echo(f"searched {steps}-step grid: {metric} {r.score:.4g} (named grids: {base}); saved {out}")
    typer.echo("times: " + ", ".join(f"{t:.5f}" for t in r.grid.tolist()))


@app.command("distill")
@friendly
def distill_cmd(
    method: str = typer.Argument(..., help="distillation method; `fewstep info` lists them (cd, pd, scm, reflow, ...)"),
    teacher: str = typer.Option("digits-teacher", help="shipped name (digits or digits-teacher, shapes, photos) or checkpoint path"),
    steps: int = typer.Option(4, "--student-steps", parser=checks.count(1, 1000), help="the student's sampling steps (NFE)"),
    out: Path = typer.Option(..., help="student checkpoint stem (OUT.safetensors + OUT.json + OUT.report.json)"),
    iters: Optional[int] = typer.Option(None, "--iterations", parser=checks.count(1), help="training iterations (default: the benchmark budget, 600)"),
    batch_size: Optional[int] = typer.Option(None, parser=checks.count(1, 65_536), help="global batch (default 64)"),
    lr: Optional[float] = typer.Option(None, parser=checks.real(0, 1, lo_open=True), help="learning rate (default 5e-5)"),
    option: list[str] = typer.Option([], "--option", "-o", help="objective setting key=value (repeatable), e.g. -o ema_decay=0.95"),
    work_dir: Optional[Path] = typer.Option(None, help="checkpoints for resume (default: OUT.work)"),
    eval_n: int = typer.Option(500, parser=checks.count(20, 1_000_000), help="samples for the final report (>= 20)"),
    trajectories: Optional[int] = typer.Option(None, parser=checks.count(1, 1_000_000), help="teacher trajectories to generate for trajectory-based methods (default 4096 digits, 1024 shapes)"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    reward: Optional[str] = typer.Option(None, help="'classifier': the shipped reward classifier's log-probability of the class "
                                                   "(never the evaluation classifier), for methods with a reward term "
                                                   "(flash-dmd with -o reward_weight=0.02)"),
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", parser=checks.real(0, 1e7, lo_open=True),
                                                help="a wall-clock training budget: stop at the first iteration past it "
                                                     "(--iterations is then an upper bound)"),
) -> None:
    """Distil a teacher into a few-step student; resumes if interrupted; prints and saves a report.

    Scale out with: torchrun --nproc-per-node N $(which fewstep-image) distill ...
    """
    from fewstep.core.io import checkpoint_stem

    from .distill import parse_options, run_distill

    name = {"digits": "digits-teacher", "shapes": "shapes-teacher", "photos": "photos-teacher"}.get(teacher, teacher)
    out = checkpoint_stem(out)
    with output_lock(out):
        run_distill(method, name, steps, out, iterations=iters, batch_size=batch_size, lr=lr, options=parse_options(option),
                    work_dir=work_dir, eval_n=eval_n, seed=seed, log=typer.echo, trajectories=trajectories, reward=reward,
                    save_every=checks.parse_save_every(save_every), resume=not restart, max_seconds=max_seconds)
    typer.echo(f"saved {written(out)} and {out}.report.json")


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("demo-out"), help="folder for report.md and figures"),
    n: int = typer.Option(400, "--n", parser=checks.count(20, 100_000), help="samples per measurement (>= 20)"),
    solver: str = typer.Option("dpmpp_2m"),
    nfe: str = typer.Option("5,10,20,50", parser=checks.int_list(1, 1000), help="comma-separated step counts"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
) -> None:
    """The main job: sample the shipped teachers, measure quality vs NFE, write OUT/report.md."""
    from .demo import run_demo

    with output_lock(out):
        run_demo(out, nfe=checks.int_list(1, 1000).parse(nfe), n=n, solver=solver, seed=seed, log=typer.echo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
