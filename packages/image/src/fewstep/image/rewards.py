"""Image rewards for objectives that fine-tune while distilling (``fewstep.core.distill.rewards``).

``classifier_reward("digits")`` is the log-probability the shipped *reward* classifier of a dataset
(``fewstep.image.classifier``, role "reward": trained on the other half of the train split, another
seed) gives the requested class: log softmax(classifier(x))[y], a differentiable (B,) reward with
frozen weights. The evaluation classifier that defines dFD is never a reward. It rewards class fidelity, as a CFG-like signal
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
    """The reward log p(y | x) under the *reward* classifier shipped for ``dataset`` ("digits",
    "shapes"): trained on the other half of the train split with another seed than the evaluation
    classifier that defines dFD and accuracy, which no method is ever given."""
    path = classifier_path(dataset, "reward")
    if not path.with_name(path.name + ".safetensors").is_file():
        raise FileNotFoundError(
            f"{path}.safetensors: no reward classifier for {dataset}; train it with "
            f"`fewstep-image train-classifier {dataset} --role reward` (the evaluation classifier is never used as a reward)"
        )
    if _tensors_hash(path) == _tensors_hash(classifier_path(dataset, "eval")):
        raise ValueError(f"{path}: the reward classifier holds the evaluation classifier's weights; retrain it with --role reward")
    return ClassifierReward(load_classifier(path))


def _tensors_hash(stem) -> str:
    """The SHA-256 of a checkpoint's tensors, read without building the net (the evaluation
    classifier is compared this way, never loaded, when a reward is made)."""
    from safetensors.torch import load_file

    from fewstep.core.io import tensors_sha256

    return tensors_sha256(load_file(f"{stem}.safetensors"))


__all__ = ["ClassifierReward", "classifier_reward"]
