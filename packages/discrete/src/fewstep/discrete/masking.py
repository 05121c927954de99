"""Masked (absorbing-state) diffusion in continuous time, MDLM style (Sahoo et al. 2024).

Forward process: each token is kept with probability alpha_t and replaced by the absorbing
``mask_id`` otherwise, independently per position; alpha falls from 1 at t = 0 to ~0 at t = 1
(log-linear: alpha_t = 1 - (1 - eps) t, MDLM Sec. 3 / SEDD's "loglinear").

SUBS parametrisation (MDLM Sec. 3.2.3): the network's logits over clean tokens never put mass on
the mask ("zero masking probabilities") and an unmasked input token is copied to the output
("carry-over unmasking"), so the prediction is a distribution over clean tokens at masked
positions only.

Loss: the continuous-time negative ELBO (MDLM eq. 10),
    L = E_t E_{z_t} [ alpha'_t / (1 - alpha_t) * sum_{l : z_t^l = m} log x_theta^l(z_t)[x^l] ],
in nats per token when divided by the length; with the log-linear schedule the weight
-alpha'_t / (1 - alpha_t) is (1 - eps) / (1 - alpha_t).

Ancestral sampling from t to s < t (MDLM eq. 7 with SUBS): a masked position is unmasked with
probability (alpha_s - alpha_t) / (1 - alpha_t), to a token drawn from x_theta; unmasked positions
never change. A position still masked at the final step is drawn from x_theta (the last step
reveals everything).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LogLinear:
    """alpha_t = 1 - (1 - eps) t: the expected share of masked tokens grows linearly in t."""

    eps: float = 1e-3

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.eps))

    def to_dict(self) -> dict:
        return {"kind": "loglinear", "eps": self.eps}


def mask_tokens(x0: Tensor, t: Tensor, schedule: LogLinear, mask_id: int, gen: torch.Generator | None = None) -> Tensor:
    """z_t ~ q(z_t | x0): each token of x0 (B, L) masked with probability 1 - alpha_t (t: (B,))."""
    u = torch.rand(x0.shape, generator=gen, device=x0.device)
    return torch.where(u < (1 - schedule.alpha(t))[:, None], torch.full_like(x0, mask_id), x0)


def subs_log_probs(logits: Tensor, z: Tensor, mask_id: int) -> Tensor:
    """SUBS: log x_theta (B, L, V) from the net's logits: the mask gets no mass, unmasked
    positions are one-hot on their own token (log 0 elsewhere)."""
    v = logits.shape[-1]
    no_mask = F.one_hot(torch.tensor(mask_id, device=logits.device), v).bool()
    logp = F.log_softmax(logits.float().masked_fill(no_mask, float("-inf")), dim=-1)
    own = F.one_hot(z.clamp(max=v - 1), v).bool()  # (B, L, V); a mask input's row is never used
    carried = torch.where(own, 0.0, float("-inf"))
    return torch.where((z != mask_id)[..., None], carried, logp)


def nelbo(net, x0: Tensor, schedule: LogLinear, mask_id: int, gen: torch.Generator | None = None,
          antithetic: bool = True) -> Tensor:
    """The per-sequence negative ELBO (B,) in nats, one Monte Carlo draw of t and z_t each.

    ``antithetic``: t evenly spread over the batch with one random offset (low-discrepancy
    sampling of t, as MDLM trains), which lowers the estimator's variance.
    """
    b = x0.shape[0]
    if antithetic:
        t = (torch.rand((), generator=gen, device=x0.device) + torch.arange(b, device=x0.device) / b) % 1.0
    else:
        t = torch.rand(b, generator=gen, device=x0.device)
    t = t.clamp_min(1e-4)
    z = mask_tokens(x0, t, schedule, mask_id, gen)
    logp = subs_log_probs(net(z, t), z, mask_id)
    ll = logp.gather(-1, x0[..., None]).squeeze(-1)  # (B, L); 0 at unmasked positions (carry-over)
    masked = (z == mask_id).float()
    weight = -schedule.dalpha(t) / (1 - schedule.alpha(t))  # (B,)
    return -(weight[:, None] * masked * ll).sum(-1)


def sample_categorical(probs: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``probs`` (..., V), via the Gumbel-max trick on log-probabilities."""
    u = torch.rand(probs.shape, generator=gen, device=probs.device).clamp_(1e-10, 1.0)
    return (probs.clamp_min(1e-30).log() - (-u.log()).log()).argmax(-1)


@torch.no_grad()
def ancestral_sample(net, n: int, length: int, mask_id: int, schedule: LogLinear, num_steps: int,
                     gen: torch.Generator | None = None, times: Tensor | None = None, device="cpu") -> tuple[Tensor, int]:
    """MDLM's ancestral sampler from all-masked sequences: (tokens (n, length), network evaluations).

    ``times``: the grid 1 = t_0 > ... > t_K = 0 (default uniform in t, K = ``num_steps``). A step
    in which no position is masked any more costs no evaluation (MDLM's caching).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: sampling needs at least one step")
    grid = torch.linspace(1.0, 0.0, num_steps + 1, device=device) if times is None else times.to(device)
    z = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    nfe = 0
    for i in range(len(grid) - 1):
        masked = z == mask_id
        if not masked.any():
            break
        t, s = grid[i], grid[i + 1]
        probs = subs_log_probs(net(z, t.expand(n)), z, mask_id).exp()
        nfe += 1
        at, as_ = schedule.alpha(t), schedule.alpha(s)
        reveal = 1.0 if i == len(grid) - 2 else float((as_ - at) / (1 - at))
        draw = sample_categorical(probs, gen)
        u = torch.rand(z.shape, generator=gen, device=z.device)
        z = torch.where(masked & (u < reveal), draw, z)
    return z, nfe
