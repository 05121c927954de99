"""``fewstep``: what the core offers and what a checkpoint holds (thin: parse and call)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from . import checks
from .cli_support import friendly, output_lock, restart_option, save_every_option, written

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fewstep core tools.")


@app.command()
@friendly
def info() -> None:
    """List solvers, time grids, schedules, parametrisations and backbones."""
    from .denoiser import PREDICTIONS
    from .nets import NETS
    from .schedules import SCHEDULES
    from .solvers import GRIDS, SOLVERS
    from .solvers.specs import describe_cost

    typer.echo("solvers (name, order, NFE for N steps, paper):")
    for spec in SOLVERS.values():
        order = "-" if spec.order is None else spec.order
        flags = ", ".join(f for f, on in (("multistep", spec.multistep), ("stochastic", spec.stochastic), ("students only", spec.student_only)) if on)
        typer.echo(f"  {spec.name:<13} {order!s:<2} {describe_cost(spec):<24} {spec.paper}{f' [{flags}]' if flags else ''}")
    typer.echo(f"grids:       {', '.join(GRIDS)}")
    typer.echo(f"schedules:   {', '.join(SCHEDULES)}")
    typer.echo(f"predictions: {', '.join(PREDICTIONS)}")
    typer.echo(f"nets:        {', '.join(NETS)}")
    from .quant import SCHEMES

    typer.echo(f"quant:       {', '.join(SCHEMES)} (fewstep quantize); pruning: fewstep prune")
    from .distill import OBJECTIVES

    typer.echo(f"distill:     {', '.join(sorted(OBJECTIVES))} (fewstep experiment --method METHOD, fewstep-image distill METHOD)")


@app.command()
@friendly
def inspect(path: Path = typer.Argument(..., help="checkpoint stem or its .safetensors/.json file")) -> None:
    """Verify a checkpoint (size, hash, tensors) and print its card."""
    from .io import load_weights

    tensors, card = load_weights(path)  # checks the stored card against the JSON copy and warns
    n = sum(t.numel() for t in tensors.values())
    typer.echo(json.dumps(card, indent=2))
    typer.echo(f"ok: {len(tensors)} tensors, {n:,} values, hash verified")


def _load(model: str):
    from .checkpoints import load_denoiser
    from .models import resolve_model

    return load_denoiser(resolve_model(model))


def _summary(before, after, out: Path, pruned: bool = False) -> None:
    from .quant import weight_bytes

    params = [sum(p.numel() for p in d.net.parameters()) for d in (before, after)]  # quantized weights are buffers
    typer.echo(
        f"wrote {written(out)}: weights {weight_bytes(before.net) / 1e6:.2f} MB -> "
        f"{weight_bytes(after.net) / 1e6:.2f} MB" + (f", {params[0]:,} -> {params[1]:,} parameters" if pruned else "")
    )


@app.command()
@friendly
def quantize(
    model: str = typer.Argument(..., help="a shipped model name (e.g. digits-teacher) or a checkpoint path"),
    out: Path = typer.Option(..., "--out", help="checkpoint stem to write (PATH.safetensors + PATH.json)"),
    scheme: str = typer.Option("w8a8", help="w8a8 | w4a8 | w8 | w4 | fp8"),
    calib: str = typer.Option("trajectory", help="calibration inputs: trajectory | ptq4dm | single"),
    calib_samples: int = typer.Option(32, parser=checks.count(1, 100_000), help="full-precision trajectories for calibration"),
    calib_steps: int = typer.Option(20, parser=checks.count(1, 10_000), help="steps of each calibration trajectory"),
    act: str = typer.Option("", help="activation scales: static (calibrated) or token (dynamic); default per scheme"),
    reconstruction: str = typer.Option("none", help="weight rounding: none | adaround | brecq"),
    recon_iters: int = typer.Option(200, parser=checks.count(1, 1_000_000), help="Adam steps per reconstructed unit"),
    group_size: int = typer.Option(-1, parser=checks.count(-1, 65_536), help="int weights: one scale per this many input columns "
                                   "(0: per channel; default: 32 for int4, per channel otherwise)"),
    no_tfmq: bool = typer.Option(False, "--no-tfmq", help="quantize the time embedding path like any other"),
    no_split: bool = typer.Option(False, "--no-split", help="one activation scale for U-Net skip concatenations"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
) -> None:
    """Post-training quantization (PTQ4DM / Q-Diffusion / TFMQ calibration) of any saved Denoiser."""
    from .checkpoints import save_denoiser
    from .quant import QuantConfig
    from .quant import quantize as quantize_denoiser

    config = QuantConfig(scheme=scheme, act=act or None, calibration=calib, calib_samples=calib_samples,
                         calib_steps=calib_steps, reconstruction=reconstruction, recon_iters=recon_iters,
                         tfmq=not no_tfmq, split_shortcut=not no_split, group_size=None if group_size < 0 else group_size, seed=seed)
    from .io import checkpoint_stem

    out = checkpoint_stem(out)
    with output_lock(out):  # a second writer, or an unwritable --out, fails here, before calibration
        den = _load(model)
        q = quantize_denoiser(den, config)
        save_denoiser(q, out, provenance={"quantized_from": str(model)})
    _summary(den, q, out)


@app.command()
@friendly
def prune(
    model: str = typer.Argument(..., help="a shipped model name (e.g. digits-teacher) or a checkpoint path"),
    out: Path = typer.Option(..., "--out", help="checkpoint stem to write (PATH.safetensors + PATH.json)"),
    ratio: float = typer.Option(0.2, parser=checks.real(0, 0.99, lo_open=True), help="share of the prunable parameters to remove, in (0, 1)"),
    steps: int = typer.Option(0, "--num-steps", parser=checks.count(1, 10_000, sentinel=0, meaning="the model's own"),
                              help="sampling steps of the mask search (0: the model's own, else 20)"),
    iters: int = typer.Option(100, "--iterations", parser=checks.count(1, 1_000_000), help="mask-training iterations"),
    batch: int = typer.Option(4, parser=checks.count(1, 4096), help="trajectories per iteration"),
    no_checkpoint: bool = typer.Option(False, "--no-checkpoint", help="disable time-step gradient checkpointing"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
) -> None:
    """EcoDiff structural pruning: learn masks through the whole sampling trajectory, then cut."""
    from .checkpoints import save_denoiser
    from .prune import PruneConfig
    from .prune import prune as prune_denoiser

    config = PruneConfig(ratio=ratio, num_steps=steps or None, iters=iters, batch=batch,
                         checkpoint=not no_checkpoint, seed=seed)
    from .io import checkpoint_stem

    out = checkpoint_stem(out)
    with output_lock(out):
        den = _load(model)
        p = prune_denoiser(den, config)
        save_denoiser(p, out, provenance={"pruned_from": str(model)})
    _summary(den, p, out, pruned=True)


@app.command("tasks")
@friendly
def list_tasks() -> None:
    """List the registered tasks of every installed fewstep package, one per line, name first."""
    from .tasks import TASKS

    for task in TASKS.values():
        typer.echo(task.describe())


@app.command()
@friendly
def experiment(
    task: str = typer.Option(..., "--task", help="a registered task (fewstep tasks), e.g. digits"),
    method: str = typer.Option(..., "--method", help="a distillation objective (fewstep info), e.g. dmd2"),
    out: Path = typer.Option(..., "--out", help="folder for report.md, metrics.json and the pictures"),
    student_steps: int = typer.Option(1, "--student-steps", parser=checks.count(1, 1000), help="the student's sampling steps"),
    iterations: int | None = typer.Option(None, "--iterations", parser=checks.count(1), help="training iterations (default: the task's budget)"),
    n: int | None = typer.Option(None, "--n", parser=checks.count(2, 1_000_000), help="evaluation samples per row (default: the task's)"),
    batch_size: int | None = typer.Option(None, "--batch-size", parser=checks.count(1, 65_536), help="training batch (default: the task's budget)"),
    seed: int = typer.Option(0, "--seed", parser=checks.seed()),
    json_out: bool = typer.Option(False, "--json", help="print metrics.json to stdout"),
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
    max_seconds: float | None = typer.Option(None, "--max-seconds", parser=checks.real(0, 1e7, lo_open=True),
                                             help="a wall-clock training budget: stop at the first iteration past it "
                                                  "(--iterations is then an upper bound), so methods compare at equal time"),
) -> None:
    """Distil a student with METHOD on TASK and report it against the teacher, every figure with its 95% interval."""
    from .experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(task=task, method=method, student_steps=student_steps, iterations=iterations, n=n,
                           seed=seed, batch_size=batch_size, save_every=save_every, restart=restart, max_seconds=max_seconds)
    with output_lock(out):
        res = run_experiment(cfg, out, log=lambda m: typer.echo(m, err=json_out))
    if json_out:
        typer.echo(json.dumps(res.summary, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
