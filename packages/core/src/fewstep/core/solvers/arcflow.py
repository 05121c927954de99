"""Placeholder: the arcflow student sampler is being written (see fewstep.core.distill.arcflow)."""

from __future__ import annotations


def sample_arcflow(model, x, ts, **opts):
    raise NotImplementedError("the arcflow sampler is not written yet")
