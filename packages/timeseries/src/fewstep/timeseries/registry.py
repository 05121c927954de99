"""Shipped TSDiff models (the ``fewstep.models`` entry point): ``seasonal-tsdiff``.

``seasonal-tsdiff`` (50k parameters, 200 KB) is
``train_tsdiff(recipe_config("seasonal", "h", hidden=48), artificial("seasonal", 24, 2).train,
TrainSettings(iterations=1500, lr=2e-3))``: gluonts' artificial ``seasonal`` series, hourly, prediction
length 24, context 48, lag 24, mean scaling (3.5 min on a busy 2-core CPU). Tests and the CLI use it.
"""

from __future__ import annotations

from pathlib import Path


def weights_dir() -> Path:
    """Folder holding the shipped checkpoints (safetensors + JSON card)."""
    return Path(__file__).resolve().parent / "weights"
