"""One training loop for teachers and students: AdamW, EMA, clipping, AMP, DDP, atomic resume.

Run it in one process, or the same script under ``torchrun --nproc-per-node N`` for DDP (gloo on
CPU, NCCL on CUDA). Every step draws its batch and noise from a generator seeded by
(seed, step, rank), so a run resumed from a checkpoint continues bit-for-bit like one that was
never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .io import CheckpointError, checkpoint_paths, load_state_into, load_weights, save_weights

LossFn = Callable[[nn.Module, Sequence[Tensor], torch.Generator], Tensor]
CKPT_NAME = "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``batch_size`` is the global batch (split over DDP ranks)."""

    iterations: int  # optimiser updates (training iterations)
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iterations: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA), "off", "bf16"
    ckpt_every: int = 500
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations}: train for at least 1 iteration")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.amp not in ("auto", "off", "bf16"):
            raise ValueError(f"amp={self.amp!r}; use 'auto', 'off' or 'bf16'")
        if self.ckpt_every < 1:
            raise ValueError("ckpt_every must be >= 1")


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    ema: dict[str, Tensor]
    seconds: float
    resumed_from: int = 0
    history: dict = field(default_factory=dict)


# -- distributed helpers --------------------------------------------------------------------------
def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_finite(x: Tensor) -> bool:
    flag = torch.tensor([float(torch.isfinite(x).all())], device=x.device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _param_groups(module: nn.Module, params: list[Tensor]) -> list[dict]:
    """One AdamW group per learning-rate scale. A module may define ``lr_scales() -> {submodule
    name prefix: scale}`` (e.g. a distillation critic trained at 2x the student's rate, DMD2's two
    time-scale rule); parameters under no prefix get scale 1."""
    scales = module.lr_scales() if hasattr(module, "lr_scales") else {}
    if not scales:
        return [{"params": params}]
    by_scale: dict[float, list[Tensor]] = {}
    trainable = {id(p) for p in params}
    for name, p in module.named_parameters():
        if id(p) not in trainable:
            continue
        scale = next((float(v) for k, v in scales.items() if name == k or name.startswith(k + ".")), 1.0)
        by_scale.setdefault(scale, []).append(p)
    return [{"params": ps, "lr_scale": sc} for sc, ps in sorted(by_scale.items())]


# -- EMA and optimizer state as flat tensors ------------------------------------------------------
def _ema_update(ema: dict[str, Tensor], module: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                ema[k].lerp_(v.detach(), 1.0 - decay)
            else:
                ema[k].copy_(v)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {
        f"opt.{i}.{name}": (v if isinstance(v, Tensor) else torch.tensor(v))
        for i, st in sd["state"].items()
        for name, v in st.items()
    }
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        _, i, name = k.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": groups}


def save_training_state(out_dir: Path, module: nn.Module, ema: dict, opt, step: int, losses, config: TrainConfig, card: dict) -> None:
    """Atomic checkpoint of everything needed to resume (rank 0 only)."""
    opt_t, groups = _flatten_optimizer(opt)
    tensors = {**{f"model.{k}": v for k, v in module.state_dict().items()}, **{f"ema.{k}": v for k, v in ema.items()}, **opt_t}
    meta = {**card, "kind": "training-state", "step": step, "losses": losses, "param_groups": groups, "train_config": asdict(config)}
    save_weights(out_dir / CKPT_NAME, tensors, meta)


def load_training_state(out_dir: Path, module: nn.Module, opt) -> tuple[dict[str, Tensor], int, list[float]]:
    tensors, card = load_weights(out_dir / CKPT_NAME)
    if card.get("kind") != "training-state":
        raise CheckpointError(f"{out_dir / CKPT_NAME}: not a training checkpoint")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_into(module, model_sd, str(checkpoint_paths(out_dir / CKPT_NAME)[0]))
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    opt.load_state_dict(_unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("opt.")}, card["param_groups"]))
    return ema, int(card["step"]), list(card.get("losses", []))


# -- the loop ---------------------------------------------------------------------------------------
def _batch(data: Sequence[Tensor | None], n_local: int, gen: torch.Generator, device) -> list[Tensor | None]:
    n = data[0].shape[0]
    idx = torch.randint(0, n, (n_local,), generator=gen)
    return [None if d is None else d[idx].to(device) for d in data]


def train(
    module: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor | None],
    config: TrainConfig,
    out_dir: str | os.PathLike,
    card: dict | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train ``module``'s parameters to minimise ``loss_fn(model, batch, generator).mean()``.

    ``model`` handed to the loss is ``module`` itself, or its DDP wrapper under torchrun: the loss
    must call it (not ``module``) so gradients are synchronised. ``data`` is a list of tensors with
    a shared first dimension (None entries pass through). Checkpoints go to ``out_dir`` every
    ``config.ckpt_every`` steps and at the end; an existing checkpoint there is resumed from.
    """
    out_dir = Path(out_dir)
    card = dict(card or {})
    rank, world, device = init_distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by world size {world}")
    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("module has no trainable parameters")
    opt = torch.optim.AdamW(_param_groups(module, params), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    ema = {k: v.detach().clone() for k, v in module.state_dict().items()}
    step, losses = 0, []
    if resume and checkpoint_paths(out_dir / CKPT_NAME)[1].is_file():
        ema, step, losses = load_training_state(out_dir, module, opt)
        ema = {k: v.to(device) for k, v in ema.items()}
    resumed_from = step
    # A module whose steps leave some parameters without gradients (a critic-only step of DMD2) asks
    # DDP to look for them, else DDP stops at the next step waiting for those gradients.
    model: nn.Module = DDP(module, find_unused_parameters=bool(getattr(module, "find_unused_parameters", False))) if world > 1 else module
    use_amp = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    bar = tqdm(total=config.iterations, initial=step, disable=not config.progress or rank != 0, desc="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while step < config.iterations:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 7919 + rank)
            batch = _batch(data, config.batch_size // world, gen, device)
            lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup_iterations))
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with autocast():
                loss = loss_fn(model, batch, gen).mean()
            if not _all_finite(loss.detach()):
                raise FloatingPointError(_diverged(loss, step, out_dir, config))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
            if not _all_finite(gnorm.detach()):
                raise FloatingPointError(_diverged(gnorm, step, out_dir, config, what="gradient norm"))
            opt.step()
            step += 1
            _ema_update(ema, module, min(config.ema_decay, (1 + step) / (10 + step)))
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
            if step % config.ckpt_every == 0 or step == config.iterations:
                if rank == 0:
                    save_training_state(out_dir, module, ema, opt, step, losses, config, card)
                _barrier()
    except KeyboardInterrupt:
        if rank == 0 and step > resumed_from:
            save_training_state(out_dir, module, ema, opt, step, losses, config, card)
            print(f"\ninterrupted at step {step}; checkpoint saved in {out_dir}, run again to resume")
        raise
    finally:
        bar.close()
    return TrainResult(step, losses, ema, time.perf_counter() - t0, resumed_from)


def _diverged(value: Tensor, step: int, out_dir: Path, config: TrainConfig, what: str = "loss") -> str:
    last = (step // config.ckpt_every) * config.ckpt_every
    where = f"the last checkpoint (step {last}) is in {out_dir}" if last else "no checkpoint was written yet"
    return (
        f"{what} became {float(value.detach())} at step {step}: training diverged; {where}. "
        f"Lower the learning rate (lr={config.lr}), keep grad_clip > 0, or check the data for NaN/inf."
    )
