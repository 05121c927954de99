"""Save and load whole Denoisers: net weights + a card (schedule, prediction, net config, provenance)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .card import Boundary, CardError, ModelCard, Reparam, SamplerRule
from .denoiser import Denoiser
from .io import CheckpointError, checkpoint_paths, load_state_into, load_weights, save_weights
from .schedules import schedule_from_dict


def denoiser_card(denoiser: Denoiser, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON card describing a Denoiser built from a fewstep net: the model contract (net,
    schedule, parametrisation, conditioning, guidance, boundary) and its :class:`ModelCard`.
    ``extra`` facts are added to the card's provenance."""
    from .nets import net_spec
    from .transforms import recorded

    kind, config = net_spec(denoiser.net)
    transforms = recorded(denoiser.net)
    card = denoiser.card.with_provenance(**extra) if extra else denoiser.card
    return {
        "kind": "denoiser",
        "net": {"kind": kind, "config": config},
        "schedule": denoiser.schedule.to_dict(),
        "prediction": denoiser.prediction,
        "sample_shape": list(denoiser.sample_shape) if denoiser.sample_shape else None,
        "num_classes": denoiser.num_classes,
        "guidance": denoiser.guidance,
        "clip_x0": denoiser.clip_x0,
        "boundary": denoiser.boundary.to_dict() if denoiser.boundary else None,
        **({"reparam": denoiser.reparam.to_dict()} if denoiser.reparam else {}),
        "card": card.to_dict(),
        **({"transforms": transforms} if transforms else {}),
    }


def model_card_from_json(card: dict[str, Any], where: str) -> ModelCard:
    """The typed card of a denoiser checkpoint; cards written before the typed ModelCard kept
    ``steps``, ``sampler`` and ``info`` at the top level, and are read as such."""
    try:
        if "card" in card:
            return ModelCard.from_dict(card["card"])
        sampler = card.get("sampler")
        return ModelCard(card.get("steps"), SamplerRule.from_dict(sampler) if sampler else None, card.get("info") or {})
    except CardError as e:
        raise CheckpointError(f"{where}: {e}; fix the card or re-save the model with fewstep") from None


def save_denoiser(
    denoiser: Denoiser,
    path: str | os.PathLike,
    state: dict[str, torch.Tensor] | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write ``path.safetensors`` + ``path.json``; ``state`` overrides the net weights (e.g. EMA);
    ``provenance`` facts are added to the saved card's."""
    tensors = state if state is not None else denoiser.net.state_dict()
    save_weights(path, tensors, denoiser_card(denoiser, provenance))


def replay(net: torch.nn.Module, specs: list[dict[str, Any]]) -> torch.nn.Module:
    """Re-apply recorded transforms (``transforms.py``) to a fresh net of the original architecture,
    in order, before its weights are loaded."""
    from .prune import restore_structure as restore_pruned
    from .quant import restore_structure as restore_quantized
    from .transforms import record

    restorers = {"prune": restore_pruned, "quant": restore_quantized}
    for spec in specs:
        kind = spec.get("kind")
        if kind not in restorers:
            raise ValueError(f"unknown transform {kind!r}; this fewstep knows {sorted(restorers)}")
        restorers[kind](net, spec)
        record(net, spec)
    return net


def _check_weights_fit_memory(tensors: dict[str, torch.Tensor], card: dict, card_path) -> None:
    """A net config whose width or depth was edited to an absurd size would allocate far more than
    the weights hold: refuse a config whose parameter count (estimated from the config's width
    scaling) exceeds the memory left, before the allocator is asked."""
    from .checks import available_memory

    config = card.get("net", {}).get("config", {})
    for key in ("channels", "hidden", "width", "dim", "hidden_size"):
        value = config.get(key)
        if isinstance(value, (int, float)) and value > 0:
            stored = sum(t.numel() for t in tensors.values()) or 1
            widest = max((max(t.shape) for t in tensors.values() if t.ndim), default=1)
            estimate = stored * (value / max(1, min(value, widest))) ** 2 * 4  # parameters grow with width squared
            if estimate > available_memory():
                raise ValueError(
                    f"net config {key}={value} would need about {estimate / 2**30:.0f} GiB of weights, more than "
                    f"this machine has: the card does not describe the weights beside it"
                )


def load_denoiser(path: str | os.PathLike, device: str | torch.device = "cpu", expect_schedule: dict | None = None) -> Denoiser:
    """Rebuild a Denoiser from its checkpoint; every problem raises a CheckpointError naming the file."""
    from .nets import build_net

    weights_path, card_path = checkpoint_paths(path)
    tensors, card = load_weights(path)
    if card.get("kind") != "denoiser":
        raise CheckpointError(f"{card_path}: holds a {card.get('kind')!r}, not a denoiser")
    missing = [k for k in ("net", "schedule", "prediction") if k not in card]
    if missing:
        raise CheckpointError(f"{card_path}: card lacks {missing}; re-save the model with fewstep")
    model_card = model_card_from_json(card, str(card_path))
    try:
        schedule = schedule_from_dict(card["schedule"])
        boundary = Boundary.from_dict(card["boundary"]) if card.get("boundary") else None
        reparam = Reparam.from_dict(card["reparam"]) if card.get("reparam") else None
        _check_weights_fit_memory(tensors, card, card_path)
        net = build_net(card["net"]["kind"], card["net"]["config"])
        replay(net, card.get("transforms", []))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{card_path}: {e}") from e
    except (RuntimeError, MemoryError) as e:  # an allocation the card asked for failed
        raise CheckpointError(f"{card_path}: its net config could not be built ({str(e).splitlines()[0][:200]}); "
                              f"the card does not describe the weights beside it") from None
    if expect_schedule is not None and schedule.to_dict() != expect_schedule:
        raise CheckpointError(
            f"{card_path}: the checkpoint was trained with schedule {schedule.to_dict()} but "
            f"{expect_schedule} was requested; sample it with its own schedule"
        )
    load_state_into(net, tensors, str(weights_path))
    shape = card.get("sample_shape")
    den = Denoiser(
        net,
        schedule,
        card["prediction"],
        sample_shape=tuple(shape) if shape else None,
        num_classes=int(card.get("num_classes", 0)),
        guidance=float(card.get("guidance", 1.0)),
        clip_x0=card.get("clip_x0"),
        boundary=boundary,
        card=model_card,
        reparam=reparam,
    )
    return den.to(device).eval()
