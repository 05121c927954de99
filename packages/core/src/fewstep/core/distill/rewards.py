"""Rewards for distillation objectives that fine-tune while they distil (Flash-DMD's joint stage).

A reward is any callable ``reward(x, cond) -> (B,)``: ``x`` (B, ...) samples in the data's range
([-1, 1] for images), ``cond`` (B,) labels or None; higher is better, and it must be
differentiable in ``x`` (its own weights frozen), because objectives maximise it by gradient
through the student's sample (direct reward fine-tuning, as ReFL / DRaFT do).

``distill(..., reward=fn)`` attaches it to the DistillModule (``module.attach("reward", fn)``):
not a submodule, so it is neither trained nor checkpointed nor synchronised under DDP or FSDP. Modality packages ship
concrete rewards (``fewstep.image.rewards.classifier_reward``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Reward(Protocol):
    """``(x, cond) -> (B,)`` reward of samples x (higher is better), differentiable in x."""

    def __call__(self, x: Tensor, cond: Tensor | None) -> Tensor: ...


def reward_values(reward: Reward, x: Tensor, cond: Tensor | None) -> Tensor:
    """``reward(x, cond)`` as a float (B,) tensor, with a message that says what is wrong otherwise."""
    r = reward(x, cond)
    if not isinstance(r, Tensor) or r.shape != (x.shape[0],):
        got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"a reward must return one value per sample, shape ({x.shape[0]},); got {got}")
    return r.float()


def check_reward(reward: Reward, x: Tensor, cond: Tensor | None = None) -> Tensor:
    """Call ``reward`` on samples ``x`` and check the protocol: a (B,) finite output whose gradient
    reaches ``x`` and is finite. Returns the values (detached); raises ValueError / TypeError."""
    if not callable(reward):
        raise TypeError(f"a reward must be callable (x, cond) -> (B,), got {type(reward).__name__}")
    x = x.detach().clone().requires_grad_(True)
    r = reward_values(reward, x, cond)
    if not torch.isfinite(r).all():
        raise ValueError("the reward returned non-finite values")
    if not r.requires_grad:
        raise ValueError("the reward is not differentiable in x: compute it with autograd on (no torch.no_grad)")
    (grad,) = torch.autograd.grad(r.sum(), x, allow_unused=True)
    if grad is None or not torch.isfinite(grad).all():
        raise ValueError("the reward's gradient w.r.t. x is missing or not finite")
    return r.detach()


def module_reward(module, who: str) -> Reward:
    """The reward attached to a DistillModule, or a ValueError that says how to give one."""
    reward = module.attachments.get("reward")
    if reward is None:
        raise ValueError(
            f"{who} has reward_weight > 0 but no reward was given: pass distill(..., reward=fn) with "
            "fn(x, cond) -> (B,) (e.g. fewstep.image.rewards.classifier_reward(dataset)), or set reward_weight=0"
        )
    return reward


__all__ = ["Reward", "check_reward", "module_reward", "reward_values"]
