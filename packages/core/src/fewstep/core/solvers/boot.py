"""Placeholder: the boot student sampler is being written (see fewstep.core.distill.boot)."""

from __future__ import annotations


def sample_boot(model, x, ts, **opts):
    raise NotImplementedError("the boot sampler is not written yet")
