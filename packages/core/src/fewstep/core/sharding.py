"""FSDP2 for the train loop: the sharding plan, activation checkpointing, and full <-> sharded state.

``train(..., TrainConfig(strategy="fsdp"))`` under torchrun shards parameters, gradients and
optimiser states over the ranks with PyTorch's own ``torch.distributed.fsdp.fully_shard`` (FSDP2,
per-parameter DTensor sharding on dim 0); nothing here is a home-made engine.

Sharding plan (:func:`shard_groups`): one FSDP group per *block* (an element of an ``nn.ModuleList``
that holds parameters: a UNet's ResBlocks, a DiT's transformer blocks), one per module outside the
blocks that owns parameters directly (embeddings, in/out convs, a GAN head's layers), then the
root. Fine groups outside the blocks keep every call path working: FSDP2 all-gathers a group when
*its* forward runs, so an objective that calls ``critic.features(...)`` (not ``critic(...)``) or
lerps the student's parameters into an EMA target between forwards still meets either whole
parameters or matching shards, never a mix. A module that already carries forward hooks is not a
group of its own (its parameters join the root's): FSDP2 appends its reshard hook after them, and
a hook that ends the pass early by raising (``critic.FakeScoreGAN`` reading the fake score's
features) would leave the group half-way. Frozen parts inside the trained module (an EMA target,
a consistency path) are sharded too; the teacher lives outside the module tree and is replicated.

Activation checkpointing (:func:`set_checkpointing`): the composable
``torch.distributed._composable.checkpoint`` on each block (non-reentrant ``torch.utils.checkpoint``
driven by forward hooks). Unlike ``checkpoint_wrapper`` it keeps the block's class and parameter
names, so a UNet's ``isinstance(block, ResBlock)`` dispatch and every checkpoint key stay as they are.

Mixed precision: with ``amp`` on, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``:
all-gathers and compute in bf16, gradients reduced and AdamW run on fp32 shards (master weights).
Inputs are not cast by FSDP (``cast_forward_inputs=False``): the time arguments are float64 and
must stay so; the loop's bf16 autocast handles the mixed dtypes, as it does under DDP.

Checkpoints: the full state is gathered to rank 0 (``get_model_state_dict`` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``) and written as the
one safetensors file every strategy writes; on resume every rank reads it and loads its shards
(``set_optimizer_state_dict``; :func:`shard_like` for the EMA). Chosen over sharded
``torch.distributed.checkpoint`` files because one format resumes under any strategy and world
size (a DDP run continues under FSDP, 8 ranks continue on 4, one process reads it), and the
atomic write of ``io.save_weights`` is reused. The cost is rank 0's host memory: the full fp32
weights + EMA + two AdamW moments, 16 bytes per trained parameter (docs/scale.md); past a few
billion parameters switch to ``torch.distributed.checkpoint.save`` of the same state dicts.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

FULL_TO_RANK0 = {"full_state_dict": True, "cpu_offload": True}


def blocks(module: nn.Module) -> list[nn.Module]:
    """Outermost elements of ``nn.ModuleList`` s that hold parameters (a net's repeated blocks)."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(m, nn.ModuleList) and any(True for _ in child.parameters()):
                out.append(child)  # a block: its own inner lists are not blocks again
            else:
                visit(child)

    visit(module)
    return out


def shard_groups(module: nn.Module) -> list[nn.Module]:
    """The FSDP groups, innermost first as ``fully_shard`` needs them: blocks, then every other
    module owning parameters directly, then the root; modules with forward hooks of their own stay
    in the root's group (module docstring)."""
    found = blocks(module)
    inside = {id(m) for b in found for m in b.modules()}
    loose = [
        m
        for m in module.modules()
        if m is not module and id(m) not in inside and any(True for _ in m.parameters(recurse=False))
    ]
    return [m for m in (*found, *loose) if not m._forward_hooks] + [module]


def set_checkpointing(module: nn.Module, on: bool) -> int:
    """Activation checkpointing on (or off) for every block of ``module``; returns how many."""
    from torch.distributed._composable import checkpoint
    from torch.distributed._composable.contract import _get_registry

    found = blocks(module)
    for b in found:
        if "checkpoint" in (_get_registry(b) or {}):
            checkpoint.state(b).enable_hook = on  # applied before (an earlier train call): toggle
        elif on:
            checkpoint(b)
    return len(found)


def sharded_copy(module: nn.Module, device: torch.device, bf16: bool, activation_checkpointing: bool) -> nn.Module:
    """A copy of ``module`` on ``device``, sharded over the default process group.

    A copy, so the caller's module keeps plain parameters: ``train`` loads the gathered result back
    into it at the end, and samplers, metrics and saving see an ordinary module. (A DistillModule's
    copy shares its teacher and attachments, ``DistillModule.__deepcopy__``.)
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    engine = copy.deepcopy(module).to(device)
    plan = shard_groups(engine)  # before checkpointing adds its own hooks to the blocks
    if activation_checkpointing:
        set_checkpointing(engine, True)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
        cast_forward_inputs=False,
    )
    for m in plan:
        fully_shard(m, mesh=mesh, mp_policy=policy)
    return engine


# -- full <-> sharded state -------------------------------------------------------------------------
def full_tensor(x: Tensor) -> Tensor:
    """The whole tensor of a DTensor shard (a collective: every rank must call), else ``x``."""
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


def shard_like(full: Tensor, ref: Tensor) -> Tensor:
    """``full`` cut like ``ref``: the same DTensor placement (each rank keeps its own slice, no
    communication), or a plain tensor on ``ref``'s device."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None)
    return full.to(ref.device, ref.dtype)


def full_model_state(engine: nn.Module, rank0_only: bool) -> dict[str, Tensor]:
    """The sharded module's whole state dict: on rank 0 in CPU memory (``rank0_only``; others get
    {}), or on every rank on its device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(**FULL_TO_RANK0) if rank0_only else StateDictOptions(full_state_dict=True)
    return get_model_state_dict(engine, options=opts)


def full_optimizer_state(engine: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """One optimiser's whole state keyed by parameter name, on rank 0 (others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(engine, opt, options=StateDictOptions(**FULL_TO_RANK0))


def load_full_optimizer_state(engine: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole, name-keyed optimiser state (read by every rank) into the sharded optimiser."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(engine, opt, state, options=StateDictOptions(full_state_dict=True))


__all__ = [
    "blocks",
    "full_model_state",
    "full_optimizer_state",
    "full_tensor",
    "load_full_optimizer_state",
    "set_checkpointing",
    "shard_groups",
    "shard_like",
    "sharded_copy",
]
