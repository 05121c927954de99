"""Image rewards for objectives that fine-tune while distilling (``fewstep.core.distill.rewards``).

``classifier_reward("digits")`` is the log-probability the shipped classifier of a dataset
(``fewstep.image.classifier``) gives the requested class: log softmax(classifier(x))[y], a
differentiable (B,) reward with frozen weights. It rewards class fidelity, as a CFG-like signal
from a model other than the teacher; like any learned reward it can be hacked (adversarial
patterns the classifier likes), which is why Flash-DMD keeps the distillation losses on beside it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import Classifier, classifier_path, load_classifier


class ClassifierReward:
    """log p_classifier(y | x) (B,) for images x (B, C, H, W) in [-1, 1] and labels y (B,).

    Not an nn.Module on purpose: attached to a DistillModule it stays outside the trained and
    checkpointed parts. The classifier is a private frozen copy, moved to x's device on first use.
    Unconditional calls (cond None or null labels) get the log-probability of the most likely
    class, so the reward still measures how recognisable a sample is.
    """

    def __init__(self, classifier: Classifier):
        self.classifier: nn.Module = copy.deepcopy(classifier).eval().requires_grad_(False)
        self.num_classes = classifier.config.num_classes

    def __call__(self, x: Tensor, cond: Tensor | None) -> Tensor:
        c = self.classifier
        if next(c.parameters()).device != x.device:
            c.to(x.device)
        logp = F.log_softmax(c(x.float()), dim=1)  # (B, K)
        if cond is None:
            return logp.max(1).values
        y = cond.long().to(x.device)
        valid = (y >= 0) & (y < self.num_classes)
        own = logp.gather(1, y.clamp(0, self.num_classes - 1)[:, None]).squeeze(1)
        return torch.where(valid, own, logp.max(1).values)

    def __repr__(self) -> str:
        return f"ClassifierReward(num_classes={self.num_classes})"


def classifier_reward(dataset: str) -> ClassifierReward:
    """The reward log p(y | x) under the classifier shipped for ``dataset`` ("digits", "shapes")."""
    return ClassifierReward(load_classifier(classifier_path(dataset)))


__all__ = ["ClassifierReward", "classifier_reward"]
