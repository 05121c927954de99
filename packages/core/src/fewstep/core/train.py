"""One training loop for teachers and students: one AdamW per part, EMA, clipping, AMP, DDP or FSDP2, atomic resume.

Run it in one process, or the same script under ``torchrun --nproc-per-node N`` to replicate the
module (``strategy="ddp"``, DistributedDataParallel) or shard it (``strategy="fsdp"``, FSDP2
``fully_shard``, ``sharding.py``) over the ranks (gloo on CPU, NCCL on CUDA). A module may declare
trainable parts (``parts.py``: a distillation student, critic, discriminator): each gets its own
AdamW, learning-rate multiple, betas, weight decay, gradient clip and update ratio; a plain module
is one part. Every iteration draws its batch and noise from a generator seeded by (seed,
iteration, rank), so a run resumed from a checkpoint continues bit-for-bit like one that was never
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import faults, sharding
from .io import CheckpointError, checkpoint_exists, checkpoint_paths, load_state_into, load_weights, save_weights
from .locks import writing
from .parts import WHOLE, Part, module_parts, part_parameters, update_period

LossFn = Callable[[nn.Module, Sequence[Tensor], torch.Generator], Tensor]
CKPT_NAME = "checkpoint"
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``batch_size`` is the global batch (split over the ranks). ``lr``,
    ``betas``, ``weight_decay`` and ``grad_clip`` are every part's unless its ``Part`` says otherwise."""

    iterations: int  # training iterations (one forward/backward each; a part steps on its turns)
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iterations: int = 100
    lr_schedule: str = "constant"  # after the linear warmup: "constant", or "cosine" decay to 0 at the last iteration
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # max gradient norm, per part; 0 = no clipping
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA), "off", "bf16"; fsdp: also bf16 all-gathers
    save_every: int | None = None  # write the resumable checkpoint every this many iterations ...
    save_every_seconds: float | None = 120.0  # ... or after this much work (and always at the end and when stopped)
    seed: int = 0
    progress: bool = True
    strategy: str = "ddp"  # under torchrun: "ddp" replicates the module, "fsdp" shards it (FSDP2)
    activation_checkpointing: bool = False  # recompute each net block's activations in backward
    # A wall-clock budget of training work (seconds, summed over resumed runs): the run ends at the
    # first iteration boundary past it, even before ``iterations`` (then an upper bound), so methods
    # of different cost per iteration can be compared at equal time. None: iterations only.
    max_seconds: float | None = None

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations}: train for at least 1 iteration")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.amp not in ("auto", "off", "bf16"):
            raise ValueError(f"amp={self.amp!r}; use 'auto', 'off' or 'bf16'")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"save_every={self.save_every}: save every >= 1 iterations (None: by time only)")
        if self.save_every_seconds is not None and not (math.isfinite(self.save_every_seconds) and self.save_every_seconds > 0):
            raise ValueError(f"save_every_seconds={self.save_every_seconds} must be a finite number > 0 (None: by iterations only)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; use 'constant' or 'cosine'")
        if self.max_seconds is not None:
            if not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
                raise ValueError(f"max_seconds={self.max_seconds} must be a finite number > 0 (None: no time budget)")
            if self.lr_schedule == "cosine":
                raise ValueError("a time budget (max_seconds) ends at an unknown iteration: use lr_schedule='constant'")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}; use one of {STRATEGIES}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # JSON gives lists back


@dataclass
class TrainResult:
    iteration: int  # iterations done (the run's total, resumed ones included)
    losses: list[float]
    ema: dict[str, Tensor]  # the EMA state dict, whole tensors on every rank
    seconds: float
    resumed_from: int = 0
    history: dict = field(default_factory=dict)
    updates: dict[str, int] = field(default_factory=dict)  # optimiser steps per part, resumed ones included ("model": WHOLE)
    work_seconds: float = 0.0  # training work over every resumed run (what max_seconds budgets)
    budget_spent: bool = False  # stopped by max_seconds before config.iterations

    @property
    def step(self) -> int:
        """The old name of ``iteration``."""
        return self.iteration


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
    flag = torch.tensor([float(torch.isfinite(sharding.full_tensor(x)).all())], device=x.device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _ema_update(ema: dict[str, Tensor], module: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                ema[k].lerp_(v.detach(), 1.0 - decay)
            else:
                ema[k].copy_(v)


def _optimizer(part: Part, params: list[Tensor], config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params,
        lr=config.lr * part.lr_scale,
        betas=part.betas or config.betas,
        weight_decay=config.weight_decay if part.weight_decay is None else part.weight_decay,
    )


# -- the checkpoint: model, EMA and each part's optimiser state in one safetensors file -------------
# Optimiser states are keyed by parameter name ("opt.<part index>.<name>.<stat>"), whatever the
# strategy, so a checkpoint resumes under DDP, FSDP or one process alike (sharding.py).
def _named_optimizer_state(opt: torch.optim.Optimizer, names: list[str]) -> dict:
    sd = opt.state_dict()
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {names[i]: st for i, st in sd["state"].items()}, "param_groups": groups}


def _load_named_optimizer_state(opt: torch.optim.Optimizer, names: list[str], state: dict, where: str) -> None:
    index = {n: i for i, n in enumerate(names)}
    if [n for g in state["param_groups"] for n in g["params"]] != names:
        raise CheckpointError(f"{where}: its optimiser holds other parameters than this run's; train in a new work dir")
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    opt.load_state_dict({"state": {index[n]: st for n, st in state["state"].items()}, "param_groups": groups})


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global RNG states. Batches and noise come from the loop's seeded generator, but a net may
    draw from the global RNG itself (CFG label dropout, dropout): resume restores these too."""
    state = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(tensors: dict[str, Tensor], device: torch.device) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def save_training_state(
    out_dir: Path,
    model_sd,
    ema,
    optim: list[dict],
    parts,
    iteration: int,
    losses,
    config: TrainConfig,
    card: dict,
    rng: dict | None = None,
    work_seconds: float = 0.0,
) -> None:
    """Atomic checkpoint of everything needed to resume (rank 0 only; whole tensors)."""
    tensors = {
        **{f"model.{k}": v for k, v in model_sd.items()},
        **{f"ema.{k}": v for k, v in ema.items()},
        **(rng or {}),
    }
    for i, osd in enumerate(optim):
        for name, st in osd["state"].items():
            for stat, v in st.items():
                tensors[f"opt.{i}.{name}.{stat}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    meta = {
        **card,
        "kind": "training-state",
        "iteration": iteration,
        "losses": losses,
        "work_seconds": float(work_seconds),
        "parts": [asdict(p) for p in parts],
        "param_groups": [osd["param_groups"] for osd in optim],
        "train_config": asdict(config),
        "settings": run_settings(config, card),
    }
    save_weights(out_dir / CKPT_NAME, tensors, meta)


# Settings that do not change what a run computes: a run may resume with other values of these.
VOLATILE = frozenset({"progress", "save_every", "save_every_seconds", "strategy", "activation_checkpointing"})
RESTART_HINT = "rerun with --restart to discard it and start over (or write to another --out)"


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        elif k not in VOLATILE:
            flat[key] = v
    return flat


def run_settings(config: TrainConfig, card: dict | None) -> dict:
    """What defines a run, flattened to dotted keys (JSON values): the train config and the
    caller's card (recipe, objective, data), less the VOLATILE keys. Resume requires equality."""
    return json.loads(json.dumps(_flatten({"train": asdict(config), "card": card or {}}), default=str))


def changed_settings(saved: dict, now: dict) -> list[str]:
    """``"key: saved -> now"`` for every setting that differs."""
    keys = sorted(set(saved) | set(now))
    missing = "(unset)"
    return [f"{k}: {saved.get(k, missing)} -> {now.get(k, missing)}" for k in keys if saved.get(k, missing) != now.get(k, missing)]


def load_training_state(out_dir: Path, parts: Sequence[Part], settings: dict | None = None) -> dict:
    """{"model", "ema": state dicts, "optim": [name-keyed optimiser state per part], "iteration",
    "losses"}: the checkpoint in ``out_dir``, checked against this run's parts and ``settings``."""
    where = str(checkpoint_paths(out_dir / CKPT_NAME)[0])
    try:
        tensors, card = load_weights(out_dir / CKPT_NAME)
    except CheckpointError as e:
        raise CheckpointError(f"{e} The run in {out_dir} cannot be resumed: {RESTART_HINT}.") from None
    if settings is not None:
        saved_settings = card.get("settings") or _flatten({"train": card.get("train_config", {})})
        now = settings if "settings" in card else {k: v for k, v in settings.items() if k.startswith("train.")}
        # A plain run may be extended (more iterations: warmup-then-constant learning rates do not
        # depend on the total; a cosine schedule does); a module whose own schedule does puts its
        # total into the card.
        extendable = settings.get("train.lr_schedule", "constant") == "constant"

        def fixed(d):
            return {k: v for k, v in d.items() if not (extendable and k.rsplit(".", 1)[-1] == "iterations")}

        diff = changed_settings(fixed(saved_settings), fixed(now))
        done, wanted = int(card.get("iteration", 0)), int(settings.get("train.iterations", 0))
        if done > wanted:
            diff.append(f"train.iterations: the run has done {done}, more than the {wanted} asked for")
        if diff:
            raise CheckpointError(
                f"{out_dir} holds a run (at iteration {card.get('iteration')}) made with other settings: "
                f"{'; '.join(diff)}. Rerun with the saved settings to resume it, or {RESTART_HINT}."
            )
    if card.get("kind") != "training-state":
        raise CheckpointError(f"{where}: not a training checkpoint")
    if "parts" not in card:
        raise CheckpointError(
            f"{where}: written by an older fewstep (one optimiser for all parts); train in a new work dir"
        )
    saved = [p["name"] for p in card["parts"]]
    if saved != [p.name for p in parts]:
        raise CheckpointError(
            f"{where}: trains the parts {saved}, this run {[p.name for p in parts]}; train in a new work dir"
        )
    optim = [{"state": {}, "param_groups": g} for g in card["param_groups"]]
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, rest = k.split(".", 2)
            name, stat = rest.rsplit(".", 1)
            optim[int(i)]["state"].setdefault(name, {})[stat] = v
    return {
        "model": {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
        "ema": {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")},
        "optim": optim,
        "rng": {k: v for k, v in tensors.items() if k.startswith("rng.")},
        "iteration": int(card["iteration"]),
        "losses": list(card.get("losses", [])),
        "work_seconds": float(card.get("work_seconds", 0.0)),
        "where": where,
    }


# -- the loop ---------------------------------------------------------------------------------------
def _batch(data: Sequence[Tensor | None], n_local: int, gen: torch.Generator, device) -> list[Tensor | None]:
    n = data[0].shape[0]
    idx = torch.randint(0, n, (n_local,), generator=gen)
    return [None if d is None else d[idx].to(device) for d in data]


class Stopped(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving its checkpoint; the message says
    where and how to resume. A second Ctrl-C stops at once, without saving (a KeyboardInterrupt)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def _stop_requests():
    """While training, SIGINT and SIGTERM only ask the loop to stop: it finishes the iteration,
    saves, and raises :class:`Stopped`. (Signal handlers exist only in the main thread.)"""
    flag = {"signum": 0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def ask(signum, frame):
        if flag["signum"] and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        flag["signum"] = signum

    old = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Linear warmup over ``warmup_iterations``, then constant or cosine decay (``lr_schedule``)."""
    warm = max(1, config.warmup_iterations)
    if iteration < warm or config.lr_schedule == "constant":
        return config.lr * min(1.0, (iteration + 1) / warm)
    done = (iteration - warm) / max(1, config.iterations - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _agree(*flags: bool, device: torch.device) -> tuple[bool, ...]:
    """Every rank saves, stops or ends its budget at the same iteration: the flags are OR-ed over
    the ranks in one all-reduce."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t)


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

    ``model`` handed to the loss is ``module`` itself, its DDP wrapper, or its sharded FSDP copy
    under torchrun: the loss must call it (not ``module``) so gradients are synchronised. ``data``
    is a list of tensors with a shared first dimension (None entries pass through). The module's
    ``parts()`` (if it has them) say what trains with which optimiser settings (``parts.py``).

    Checkpoints go to ``out_dir`` every ``config.save_every`` iterations or ``save_every_seconds``
    of work, at the end, and when SIGINT/SIGTERM stop the run (:class:`Stopped`). The run holds
    ``out_dir``'s lock (``locks.py``). An existing checkpoint there is resumed from when it was made
    with the same settings (:func:`run_settings`: ``config`` and ``card``), else refused with the
    differing keys; ``resume=False`` (``--restart``) discards it. On return ``module`` holds the
    trained weights as plain tensors whatever the strategy.
    """
    out_dir = Path(out_dir)
    with writing(out_dir, f"the training run in {out_dir}"):
        return _train(module, loss_fn, data, config, out_dir, dict(card or {}), resume)


def _train(module, loss_fn, data, config: TrainConfig, out_dir: Path, card: dict, resume: bool) -> TrainResult:
    rank, world, device = init_distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by world size {world}")
    parts = module_parts(module)
    part_parameters(module, parts)  # a part naming nothing, or a stray trainable parameter, stops here
    settings = run_settings(config, card)
    saved = load_training_state(out_dir, parts, settings) if resume and checkpoint_exists(out_dir / CKPT_NAME) else None
    if saved:
        load_state_into(module, saved["model"], saved["where"])
    strategy = config.strategy if world > 1 else "one"
    use_amp = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    module.train()
    if strategy == "fsdp" and not getattr(module, "fsdp_ready", True):
        raise ValueError(
            f"strategy='fsdp': {getattr(getattr(module, 'objective', None), 'name', type(module).__name__)} is not "
            "marked FSDP-ready (Objective.fsdp_ready: its nets may be called a different number of times on each "
            "rank, or not through their forward); use strategy='ddp'"
        )
    if strategy == "fsdp":
        engine = sharding.sharded_copy(module, device, use_amp, config.activation_checkpointing)
        nn.Module.to(module, "cpu")  # the caller's copy waits on the host (its teacher stays shared)
    else:
        engine = module.to(device)
        if config.activation_checkpointing:
            sharding.set_checkpointing(module, True)
    named = part_parameters(engine, parts)
    names = [[n for n, _ in ps] for ps in named]
    opts = [_optimizer(part, [p for _, p in ps], config) for part, ps in zip(parts, named)]
    ema = {k: v.detach().clone() for k, v in engine.state_dict().items()}
    iteration, losses, spent_before = 0, [], 0.0
    if saved:
        for opt, nm, osd in zip(opts, names, saved["optim"]):
            if strategy == "fsdp":
                sharding.load_full_optimizer_state(engine, opt, osd)
            else:
                _load_named_optimizer_state(opt, nm, osd, saved["where"])
        if set(saved["ema"]) != set(ema):
            raise CheckpointError(f"{saved['where']}: its EMA does not fit this module; {RESTART_HINT}")
        ema = {k: sharding.shard_like(saved["ema"][k], v) for k, v in ema.items()}
        iteration, losses, spent_before = saved["iteration"], saved["losses"], saved["work_seconds"]
        _set_rng_state(saved["rng"], device)  # rank 0's: every rank draws the same shapes, so they agree
        if rank == 0 and config.progress:
            print(f"resuming from iteration {iteration} of {config.iterations} in {out_dir}", flush=True)
        del saved
    resumed_from = last_saved = iteration
    periods = [update_period(parts, p) for p in parts]
    clips = [config.grad_clip if p.grad_clip is None else p.grad_clip for p in parts]
    # Parameters without gradients at some iterations (a critic-only iteration of DMD2, a part off
    # its turn) need DDP to look for them, else DDP waits at the next iteration for those gradients.
    unused = bool(getattr(module, "find_unused_parameters", False)) or max(periods) > 1
    model: nn.Module = DDP(module, find_unused_parameters=unused) if strategy == "ddp" else engine
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    def checkpoint() -> None:
        """Gather the whole state to rank 0 and write it there (every rank must call under fsdp)."""
        if strategy == "fsdp":
            model_sd = sharding.full_model_state(engine, rank0_only=True)
            optim = [sharding.full_optimizer_state(engine, o) for o in opts]
            ema_sd = {k: sharding.full_tensor(v).cpu() for k, v in ema.items()}
        elif rank == 0:
            model_sd, optim, ema_sd = (
                module.state_dict(),
                [_named_optimizer_state(o, n) for o, n in zip(opts, names)],
                ema,
            )
        if rank == 0:
            save_training_state(
                out_dir, model_sd, ema_sd, optim, parts, iteration, losses, config, card, _rng_state(device), work()
            )
        _barrier()

    bar = tqdm(
        total=config.iterations,
        initial=iteration,
        disable=not config.progress or rank != 0,
        desc="train",
        dynamic_ncols=True,
    )
    t0 = last_save_time = time.perf_counter()

    def work() -> float:
        return spent_before + time.perf_counter() - t0

    budget_spent = config.max_seconds is not None and spent_before >= config.max_seconds
    try:
        with _stop_requests() as stop_request:
            while iteration < config.iterations and not budget_spent:
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration * 7919 + rank)
                batch = _batch(data, config.batch_size // world, gen, device)
                lr = learning_rate(config, iteration)
                for part, opt in zip(parts, opts):
                    for g in opt.param_groups:
                        g["lr"] = lr * part.lr_scale
                with autocast():
                    loss = loss_fn(model, batch, gen).mean()
                if not _all_finite(loss.detach()):
                    raise FloatingPointError(_diverged(loss, iteration, out_dir, config, last_saved))
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                turn = [iteration % period == 0 for period in periods]
                for part, opt, ps, clip, on in zip(parts, opts, named, clips, turn):
                    if not on:
                        opt.zero_grad(set_to_none=True)  # not this part's turn: its gradient is dropped
                        continue
                    gnorm = torch.nn.utils.clip_grad_norm_([p for _, p in ps], clip if clip > 0 else math.inf)
                    if not _all_finite(gnorm.detach()):
                        what = "gradient norm" + (f" of part {part.name!r}" if part.name != WHOLE else "")
                        raise FloatingPointError(_diverged(gnorm, iteration, out_dir, config, last_saved, what=what))
                for opt, on in zip(opts, turn):
                    if on:
                        opt.step()
                iteration += 1
                _ema_update(ema, engine, min(config.ema_decay, (1 + iteration) / (10 + iteration)))
                losses.append(float(loss.detach()))
                bar.update(1)
                if iteration % 10 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
                faults.hit("iteration")
                due = (
                    iteration == config.iterations
                    or (config.save_every is not None and iteration % config.save_every == 0)
                    or (config.save_every_seconds is not None and time.perf_counter() - last_save_time >= config.save_every_seconds)
                )
                over = config.max_seconds is not None and work() >= config.max_seconds
                due, stop, over = _agree(due, bool(stop_request["signum"]), over, device=device)
                due = due or over
                if due or stop:
                    checkpoint()
                    last_saved, last_save_time = iteration, time.perf_counter()
                budget_spent = over and iteration < config.iterations
                if stop and iteration < config.iterations:
                    how = "Ctrl-C" if stop_request["signum"] in (0, signal.SIGINT) else signal.Signals(stop_request["signum"]).name
                    raise Stopped(
                        f"stopped by {how} at iteration {iteration} of {config.iterations}; the checkpoint in "
                        f"{out_dir} holds it: run the same command again to resume",
                        stop_request["signum"] or signal.SIGINT,
                    )
    finally:
        bar.close()
        if config.activation_checkpointing and strategy != "fsdp":
            sharding.set_checkpointing(module, False)  # the caller's module is plain again
    if strategy == "fsdp":
        module.load_state_dict(sharding.full_model_state(engine, rank0_only=False))
        module.to(device)
        ema = {k: sharding.full_tensor(v) for k, v in ema.items()}
    updates = {(p.name or "model"): -(-iteration // period) for p, period in zip(parts, periods)}
    return TrainResult(iteration, losses, ema, time.perf_counter() - t0, resumed_from, updates=updates,
                       work_seconds=work(), budget_spent=budget_spent)


def _diverged(value: Tensor, iteration: int, out_dir: Path, config: TrainConfig, last: int, what: str = "loss") -> str:
    where = f"the last checkpoint (iteration {last}) is in {out_dir}" if last else "no checkpoint was written yet"
    return (
        f"{what} became {float(sharding.full_tensor(value.detach()))} at iteration {iteration}: training diverged; {where}. "
        f"Lower the learning rate (lr={config.lr}), keep grad_clip > 0, or check the data for NaN/inf."
    )
