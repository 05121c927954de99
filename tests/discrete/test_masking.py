import math

import pytest
import torch

from fewstep.discrete.masking import LogLinear, ancestral_sample, mask_tokens, nelbo, subs_log_probs
from fewstep.discrete.net import DiffusionTransformer, NetConfig
from fewstep.discrete.synthetic import MarkovChain


def test_subs_gives_the_mask_no_mass_and_carries_unmasked_tokens():
    v, mask = 5, 4
    logits = torch.randn(2, 3, v, requires_grad=True)
    z = torch.tensor([[0, mask, 2], [mask, mask, 1]])
    logp = subs_log_probs(logits, z, mask)
    p = logp.exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 3))
    assert (p[..., mask] == 0).all()
    assert p[0, 0, 0] == 1 and p[0, 2, 2] == 1 and p[1, 2, 1] == 1
    logp[z == mask].logsumexp(-1).sum().backward()  # differentiable through the masked rows
    assert logits.grad is not None


def test_forward_process_masks_the_schedules_share():
    x0 = torch.zeros(4000, 10, dtype=torch.long)
    t = torch.full((4000,), 0.3)
    z = mask_tokens(x0, t, LogLinear(), 7, torch.Generator().manual_seed(0))
    assert (z == 7).float().mean().item() == pytest.approx(0.3 * (1 - 1e-3), abs=0.01)


def test_markov_chain_likelihood_is_exact():
    chain = MarkovChain.random(4, seed=0)
    x = chain.sample(20000, 6, torch.Generator().manual_seed(0))
    assert -chain.log_prob(x).mean().item() == pytest.approx(chain.entropy(6), rel=0.02)  # Monte Carlo of H
    with pytest.raises(ValueError, match="no likelihood"):
        chain.log_prob(torch.tensor([[0, 4]]))


@pytest.mark.slow
def test_mdlm_learns_the_chain_and_few_steps_compound_factorised_errors():
    """The NELBO falls to near the chain's exact entropy, and sampling in 1 step (every token drawn
    independently) is far from the chain while many steps are close: the effect few-step
    samplers fight (MDLM; LSD's motivation)."""
    torch.manual_seed(0)
    chain, length, v = MarkovChain.random(6, seed=1, concentration=0.2), 8, 6
    mask = v
    net = DiffusionTransformer(NetConfig(vocab_size=v + 1, length=length, dim=48, depth=2, heads=4))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    sched = LogLinear()
    for _ in range(1000):
        loss = nelbo(net, chain.sample(128, length, gen), sched, mask, gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        test = chain.sample(2000, length, torch.Generator().manual_seed(1))
        bound = nelbo(net, test, sched, mask, torch.Generator().manual_seed(2)).mean().item()
    h = chain.entropy(length)
    assert h - 0.1 < bound < 1.15 * h < 0.5 * length * math.log(v)  # an upper bound near H, far below uniform
    nll = {}
    for steps in (1, 2, 2 * length):
        x, nfe = ancestral_sample(net, 2000, length, mask, sched, steps, torch.Generator().manual_seed(3))
        assert (x != mask).all() and nfe <= steps
        nll[steps] = -chain.log_prob(x).mean().item()  # cross-entropy of the samples under the true chain
    assert nll[2 * length] < nll[2] < nll[1] and nll[1] > 2 * nll[2 * length]
