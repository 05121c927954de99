"""Toy teachers with exact scores for the distillation tests (fast on CPU).

``GaussianMixtureNet`` returns the exact posterior mean E[x0 | x_t] of a Gaussian mixture, so a
Denoiser around it is a teacher whose probability-flow ODE is known in closed form; ``MLPNet`` is a
small trainable student for (B, D) data.
"""

import math

import torch
from torch import nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import VPDiscrete


class GaussianMixtureNet(nn.Module):
    """x0-prediction of the mixture sum_k w_k N(mu_k, s^2 I) under a VP schedule, exactly.

    Needs the schedule to invert the net time; component k is also the class label k (cond), and
    cond=None / null means the whole mixture.
    """

    def __init__(self, means, std=0.1, schedule=None):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))  # (K, D)
        self.std = float(std)
        self.schedule = schedule or VPDiscrete()

    def forward(self, x, net_t, cond=None):
        t = self.schedule.timestep_to_t(net_t.double())
        a = self.schedule.alpha(t).float().view(-1, 1)
        s = self.schedule.sigma(t).float().view(-1, 1)
        var = a**2 * self.std**2 + s**2  # (B, 1) marginal variance per dimension
        diff = x[:, None, :] - a[:, None, :] * self.means[None]  # (B, K, D)
        logits = -0.5 * diff.pow(2).sum(-1) / var  # (B, K)
        k = self.means.shape[0]
        if cond is not None:
            own = torch.nn.functional.one_hot(cond.clamp(0, k - 1).long(), k).bool()
            null = (cond >= k) | (cond < 0)
            logits = torch.where(own | null[:, None], logits, torch.full_like(logits, -math.inf))
        w = logits.softmax(-1)  # (B, K) posterior over components
        post = self.means[None] + (a * self.std**2 / var)[:, None, :] * diff  # (B, K, D)
        return (w[..., None] * post).sum(1)


class MLPNet(nn.Module):
    """A small MLP student net(x, net_t, cond) for (B, D) data with label and time embeddings."""

    def __init__(self, dim=2, hidden=64, num_classes=0):
        super().__init__()
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim + 2, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, net_t, cond=None):
        tt = net_t.float().view(-1, 1) / 1000.0
        h = self.inp(torch.cat([x, torch.sin(3 * tt), torch.cos(3 * tt)], 1))
        if self.emb is not None:
            c = torch.full((x.shape[0],), self.num_classes, device=x.device) if cond is None else cond.clamp(max=self.num_classes)
            h = h + self.emb(c.long())
        return self.body(h)


MEANS = [[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]


def gmm_teacher(means=MEANS, std=0.1) -> Denoiser:
    sched = VPDiscrete()
    return Denoiser(GaussianMixtureNet(means, std, sched), sched, "x0", sample_shape=(2,), num_classes=len(means)).eval()


def gmm_data(n=2048, means=MEANS, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.as_tensor(means)
    y = torch.randint(0, len(means), (n,), generator=g)
    return m[y] + std * torch.randn(n, m.shape[1], generator=g), y


def mode_coverage(x, means=MEANS, radius=0.4):
    """Fraction of modes that receive at least 5% of the samples within ``radius``."""
    m = torch.as_tensor(means, dtype=x.dtype)
    d = torch.cdist(x, m)
    near = (d.min(1).values < radius)
    hits = torch.bincount(d.argmin(1)[near], minlength=len(means)).float() / len(x)
    return float((hits >= 0.05).float().mean())


def sliced_wasserstein(a, b, n_proj=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(a.shape[1], n_proj, generator=g, dtype=a.dtype)
    p = p / p.norm(dim=0, keepdim=True)
    pa, pb = (a @ p).sort(0).values, (b @ p).sort(0).values
    n = min(len(pa), len(pb))
    idx_a = torch.linspace(0, len(pa) - 1, n).long()
    idx_b = torch.linspace(0, len(pb) - 1, n).long()
    return float((pa[idx_a] - pb[idx_b]).abs().mean())


class LearnableMeansGMM(GaussianMixtureNet):
    """The exact GMM teacher with its means as parameters, so copies of it (a fake score, a
    degradation path, a fine-tuned sampler) can learn."""

    def __init__(self, means, std=0.1, schedule=None):
        super().__init__(means, std, schedule)
        self.means = nn.Parameter(self._buffers.pop("means"))


def learnable_gmm_teacher(num_classes: int = 4) -> Denoiser:
    """The 2-D mixture teacher (x0-prediction, exact) with learnable means; num_classes=0: unconditional."""
    sched = VPDiscrete()
    return Denoiser(LearnableMeansGMM(MEANS, 0.1, sched), sched, "x0", sample_shape=(2,), num_classes=num_classes).eval()
