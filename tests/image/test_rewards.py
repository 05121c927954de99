"""The classifier reward: log p(y | x) under the shipped classifier, higher for real images of the
requested class than for any other class, differentiable in x with frozen weights, and it follows the
core reward protocol."""

import pytest
import torch

from fewstep.core.distill.rewards import check_reward
from fewstep.image.data import load_dataset
from fewstep.image.rewards import classifier_reward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_reward_prefers_the_true_class_and_has_a_finite_gradient(dataset):
    x, y = load_dataset(dataset, "test")
    x, y = x[:200], y[:200]
    reward = classifier_reward(dataset)
    k = reward.num_classes
    with torch.no_grad():
        own = reward(x, y)  # (B,)
        others = torch.stack([reward(x, (y + j) % k) for j in range(1, k)], 1)  # (B, K-1)
    assert own.shape == (200,) and bool((own <= 0).all())
    assert float(own.mean()) > float(others.mean()) + 3.0  # log-probabilities, so a factor e^3 on average
    assert float((own > others.max(1).values).float().mean()) > 0.9  # the true class wins for almost every image
    values = check_reward(reward, x[:16], y[:16])  # (B,), finite, gradient reaches x and is finite
    torch.testing.assert_close(values, own[:16])
    xg = x[:16].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reward(xg, y[:16]).sum(), xg)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in reward.classifier.parameters())


def test_unconditional_calls_use_the_most_likely_class():
    x, _ = load_dataset("digits", "test")
    reward = classifier_reward("digits")
    with torch.no_grad():
        best = torch.stack([reward(x[:32], torch.full((32,), c)) for c in range(10)], 1).max(1).values
        torch.testing.assert_close(reward(x[:32], None), best)
        torch.testing.assert_close(reward(x[:32], torch.full((32,), 10)), best)  # the null label
