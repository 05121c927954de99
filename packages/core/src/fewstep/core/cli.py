"""``fewstep``: what the core offers and what a checkpoint holds (thin: parse and call)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .cli_support import friendly

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fewstep core tools.")


@app.command()
@friendly
def info() -> None:
    """List solvers, time grids, schedules, parametrisations and backbones."""
    from .denoiser import PREDICTIONS
    from .nets import NETS
    from .schedules import SCHEDULES
    from .solvers import GRIDS, available

    typer.echo(f"solvers:     {', '.join(available())}")
    typer.echo(f"grids:       {', '.join(GRIDS)}")
    typer.echo(f"schedules:   {', '.join(SCHEDULES)}")
    typer.echo(f"predictions: {', '.join(PREDICTIONS)}")
    typer.echo(f"nets:        {', '.join(NETS)}")


@app.command()
@friendly
def inspect(path: Path = typer.Argument(..., help="checkpoint stem or its .safetensors/.json file")) -> None:
    """Verify a checkpoint (size, hash, tensors) and print its card."""
    from .io import load_weights

    tensors, card = load_weights(path)
    n = sum(t.numel() for t in tensors.values())
    typer.echo(json.dumps(card, indent=2))
    typer.echo(f"ok: {len(tensors)} tensors, {n:,} values, hash verified")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
