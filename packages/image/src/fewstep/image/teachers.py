"""Class-conditional image teachers: the recipe for each shipped teacher and the code that trains it.

Each recipe is data (a frozen dataclass): network config, schedule, parametrisation and training
budget. ``train_teacher`` runs the core train loop on the dataset and saves the EMA weights as a
Denoiser checkpoint; it works the same under ``torchrun --nproc-per-node N``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from fewstep.core.checkpoints import save_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.losses import DenoisingLoss
from fewstep.core.nets import UNet, UNetConfig
from fewstep.core.schedules import VPDiscrete
from fewstep.core.checks import SaveEvery
from fewstep.core.train import TrainConfig, train

from .data import dataset_info, load_dataset


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that defines a shipped teacher."""

    dataset: str
    net: UNetConfig
    prediction: str = "eps"
    schedule: VPDiscrete = field(default_factory=VPDiscrete)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(iterations=8000))


RECIPES: dict[str, TeacherRecipe] = {
    "digits": TeacherRecipe(
        dataset="digits",
        net=UNetConfig(in_channels=1, image_size=16, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(8,), num_classes=10, label_dropout=0.1),
        prediction="eps",
        train=TrainConfig(iterations=4000, batch_size=64, lr=1e-3, warmup_iterations=200, ema_decay=0.999),
    ),
    "shapes": TeacherRecipe(
        dataset="shapes",
        net=UNetConfig(in_channels=3, image_size=32, channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                       attn_resolutions=(8,), num_classes=12, label_dropout=0.1),
        prediction="v",
        train=TrainConfig(iterations=3000, batch_size=48, lr=1e-3, warmup_iterations=200, ema_decay=0.999),
    ),
    # Crops of real photographs (textures, faces, stars): the task whose dFD does not saturate.
    "photos": TeacherRecipe(
        dataset="photos",
        net=UNetConfig(in_channels=3, image_size=32, channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                       attn_resolutions=(8,), num_classes=14, label_dropout=0.1),
        prediction="v",
        train=TrainConfig(iterations=8000, batch_size=48, lr=1e-3, warmup_iterations=200, ema_decay=0.999),
    ),
}


def build_teacher(recipe: TeacherRecipe) -> Denoiser:
    info = dataset_info(recipe.dataset)
    return Denoiser(
        UNet(recipe.net),
        recipe.schedule,
        recipe.prediction,
        sample_shape=(info.channels, info.size, info.size),
        num_classes=info.num_classes,
        clip_x0=1.0,  # data lie in [-1, 1]; diffusers' DDPM default clip_sample does the same
    )


def train_teacher(
    dataset: str,
    out: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    strategy: str = "ddp",
    save_every: SaveEvery | None = None,
    resume: bool = True,
) -> Denoiser:
    """Train the recipe's teacher from scratch (resuming from ``work_dir`` if it holds a checkpoint).
    ``strategy``: "ddp" or "fsdp" under torchrun (``TrainConfig.strategy``); ``save_every``: how
    often the resumable checkpoint is written (default every 2 minutes); ``resume=False`` discards
    a saved run in ``work_dir``.

    Writes the EMA weights as a Denoiser checkpoint at ``out`` (``out.safetensors`` + ``out.json``).
    """
    if dataset not in RECIPES:
        raise ValueError(f"no teacher recipe for {dataset!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[dataset]
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps}: train for at least 1 iteration (None: the recipe's {recipe.train.iterations})")
    cfg = replace(recipe.train, seed=seed, progress=progress, strategy=strategy, **(save_every or SaveEvery()).fields(),
                  **({"iterations": steps} if steps is not None else {}))
    den = build_teacher(recipe)
    x, y = load_dataset(dataset, "train")
    work = Path(work_dir) if work_dir else Path(f"{out}.work")
    loss = DenoisingLoss()
    card = {"made_by": "fewstep-image train-teacher", "dataset": dataset, "train_config": asdict(cfg)}
    t0 = time.perf_counter()
    result = train(den, lambda model, batch, gen: loss(model, den, batch[0], batch[1], gen), [x, y], cfg, work, card, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        ema_net = {k[len("net."):]: v for k, v in result.ema.items() if k.startswith("net.")}
        den.card = den.card.with_provenance(**{
            "dataset": dataset,
            "iterations": result.step,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": sum(result.losses[-100:]) / max(1, len(result.losses[-100:])),
            "made_by": "fewstep-image train-teacher",
            "torch": torch.__version__,
        })
        save_denoiser(den, out, state=ema_net)
        den.net.load_state_dict(ema_net)
    return den.eval()
