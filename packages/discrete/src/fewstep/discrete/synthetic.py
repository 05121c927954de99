"""A random first-order Markov chain over a small vocabulary: text whose likelihood is exact.

Samples from a model can be scored by their exact log-probability under the chain, and the
model's own NELBO compared with the chain's exact entropy, so a sampler's KL to the truth is
measured rather than estimated by another network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MarkovChain:
    initial: Tensor  # (V,) probabilities of the first token
    transition: Tensor  # (V, V) rows: p(next | current)

    @classmethod
    def random(cls, vocab_size: int, seed: int = 0, concentration: float = 0.3) -> MarkovChain:
        """Dirichlet(concentration) rows: small concentrations make sharp, far-from-uniform rows."""
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: a chain needs at least 2 states")
        g = torch.Generator().manual_seed(seed)
        d = torch.distributions.Dirichlet(torch.full((vocab_size,), float(concentration)))
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=g)))
            rows = d.sample((vocab_size + 1,)).double()
        return cls(rows[0], rows[1:])

    @property
    def vocab_size(self) -> int:
        return self.initial.shape[0]

    def sample(self, n: int, length: int, gen: torch.Generator | None = None) -> Tensor:
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial.float().expand(n, -1), 1, generator=gen)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.transition[x[:, i - 1]].float(), 1, generator=gen)[:, 0]
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) (N,) in nats; tokens outside the chain's vocabulary are an error."""
        if x.ndim != 2 or int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
            raise ValueError(f"sequences must be (N, L) tokens in [0, {self.vocab_size}); a masked or foreign token has no likelihood")
        lp = self.initial.log()[x[:, 0]]
        return lp + self.transition.log()[x[:, :-1], x[:, 1:]].sum(-1)

    def entropy(self, length: int) -> float:
        """Exact entropy (nats) of a sequence of ``length``: H(x_1) + sum_i H(x_i | x_{i-1})."""
        def h(p):
            return -(p * p.clamp_min(1e-300).log()).sum(-1)

        marg, total = self.initial, float(h(self.initial))
        for _ in range(1, length):
            total += float((marg * h(self.transition)).sum())
            marg = marg @ self.transition
        return total
