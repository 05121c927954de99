"""Save and load whole Denoisers: net weights + a card (schedule, prediction, net config, provenance)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .denoiser import Denoiser
from .io import CheckpointError, checkpoint_paths, load_state_into, load_weights, read_card, save_weights
from .schedules import schedule_from_dict


def denoiser_card(denoiser: Denoiser, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON card describing a Denoiser built from a fewstep net."""
    from .nets import net_spec
    from .transforms import recorded

    kind, config = net_spec(denoiser.net)
    transforms = recorded(denoiser.net)
    return {
        **(extra or {}),
        "kind": "denoiser",
        "net": {"kind": kind, "config": config},
        "schedule": denoiser.schedule.to_dict(),
        "prediction": denoiser.prediction,
        "sample_shape": list(denoiser.sample_shape) if denoiser.sample_shape else None,
        "num_classes": denoiser.num_classes,
        "guidance": denoiser.guidance,
        "steps": denoiser.steps,
        "clip_x0": denoiser.clip_x0,
        "sampler": denoiser.sampler,
        "boundary": denoiser.boundary,
        "info": denoiser.info,
        **({"transforms": transforms} if transforms else {}),
    }


def save_denoiser(
    denoiser: Denoiser,
    path: str | os.PathLike,
    state: dict[str, torch.Tensor] | None = None,
    card: dict[str, Any] | None = None,
) -> None:
    """Write ``path.safetensors`` + ``path.json``; ``state`` overrides the net weights (e.g. EMA)."""
    tensors = state if state is not None else denoiser.net.state_dict()
    save_weights(path, tensors, denoiser_card(denoiser, card))


def load_denoiser(path: str | os.PathLike, device: str | torch.device = "cpu", expect_schedule: dict | None = None) -> Denoiser:
    """Rebuild a Denoiser from its checkpoint; every problem raises a CheckpointError naming the file."""
    from .nets import build_net
    from .transforms import replay

    weights_path, card_path = checkpoint_paths(path)
    card = read_card(path)
    if card.get("kind") != "denoiser":
        raise CheckpointError(f"{card_path}: holds a {card.get('kind')!r}, not a denoiser")
    missing = [k for k in ("net", "schedule", "prediction") if k not in card]
    if missing:
        raise CheckpointError(f"{card_path}: card lacks {missing}; re-save the model with fewstep")
    try:
        schedule = schedule_from_dict(card["schedule"])
        net = build_net(card["net"]["kind"], card["net"]["config"])
        replay(net, card.get("transforms", []))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{card_path}: {e}") from e
    if expect_schedule is not None and schedule.to_dict() != expect_schedule:
        raise CheckpointError(
            f"{card_path}: the checkpoint was trained with schedule {schedule.to_dict()} but "
            f"{expect_schedule} was requested; sample it with its own schedule"
        )
    tensors, _ = load_weights(path)
    load_state_into(net, tensors, str(weights_path))
    shape = card.get("sample_shape")
    den = Denoiser(
        net,
        schedule,
        card["prediction"],
        sample_shape=tuple(shape) if shape else None,
        num_classes=int(card.get("num_classes", 0)),
        guidance=float(card.get("guidance", 1.0)),
        steps=card.get("steps"),
        clip_x0=card.get("clip_x0"),
        sampler=card.get("sampler"),
        boundary=card.get("boundary"),
        info=card.get("info", {}),
    )
    den.card = card
    return den.to(device).eval()
