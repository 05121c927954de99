"""The exact denoiser of a Gaussian mixture (closed-form posterior mean), shared by solver tests."""

import torch


def gmm_x0(x, alpha, sigma, mu, logw, std):
    """E[x0 | x_t] for x0 ~ sum_k w_k N(mu_k, std^2 I), x_t = alpha x0 + sigma eps.

    x (B, D); alpha, sigma, std scalars or (B,); mu (M, D) or (B, M, D); logw (M,) or (B, M).
    Component k: x_t ~ N(alpha mu_k, v I), v = alpha^2 std^2 + sigma^2, and
    E[x0 | x_t, k] = mu_k + alpha std^2 / v (x_t - alpha mu_k); responsibilities weight them.
    """
    a, s, sd = (torch.as_tensor(c, dtype=x.dtype).expand(x.shape[0]) for c in (alpha, sigma, std))
    v = a**2 * sd**2 + s**2  # (B,)
    diff = x[:, None, :] - a[:, None, None] * mu  # (B, M, D)
    r = torch.softmax(logw - 0.5 * diff.square().sum(-1) / v[:, None], dim=1)  # (B, M)
    return (r[..., None] * (mu + (a * sd**2 / v)[:, None, None] * diff)).sum(1)
