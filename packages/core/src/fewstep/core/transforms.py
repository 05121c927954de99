"""Structural transforms recorded on a net, so a checkpoint can rebuild the changed architecture.

Pruning removes channels and heads; quantization swaps layers for packed low-bit ones. Neither is
visible in the net's config, so each transform appends a JSON spec to ``net.fewstep_transforms``;
``save_denoiser`` writes the list into the card and ``load_denoiser`` replays it, in order, on the
freshly built net before loading the weights (so a pruned-then-quantized model round-trips).
This module is a leaf: quant and prune import it; the replay (which needs both) lives in checkpoints.
"""

from __future__ import annotations

from typing import Any

from torch import nn

ATTR = "fewstep_transforms"


def recorded(net: nn.Module) -> list[dict[str, Any]]:
    """The transform specs applied to ``net`` so far (oldest first)."""
    return list(getattr(net, ATTR, []))


def record(net: nn.Module, spec: dict[str, Any]) -> None:
    """Append one transform spec (a JSON-able dict with a ``kind`` key) to ``net``'s history."""
    if "kind" not in spec:
        raise ValueError("a transform spec needs a 'kind' key")
    object.__setattr__(net, ATTR, [*recorded(net), spec])
