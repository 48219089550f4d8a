"""Maximum likelihood next to Bayes: the textbook examples, each with its closed form.

Built-ins (Pyro models; with ``--arg flat_priors=true`` the MAP is the MLE):

- ``gaussian_mle``: y_i ~ N(mu, sigma2) with the conjugate normal-inverse-gamma prior
  sigma2 ~ InvGamma(a0, b0), mu | sigma2 ~ N(m0, sigma2 / k0). The MLE is
  (mean(y), mean((y - mean(y))^2)); the posterior is NIG(m_n, k_n, a_n, b_n) in closed
  form (:func:`normal_inverse_gamma_posterior`).
- ``bernoulli_mle``: y_i ~ Bernoulli(p), p ~ Beta(a, b). The MLE is mean(y); the
  posterior is Beta(a + sum(y), b + n - sum(y)).

Helpers: the multivariate Gaussian MLE, KL(N1 || N2) in closed form and by Monte
Carlo, and fitting q to data by minimising KL(p_data || q) (cross-entropy), which is
maximum likelihood. The closed forms are few lines each, so they are written here;
torch.distributions' ``kl_divergence`` and SciPy are the checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.models.flat_prior import Flat
from bayesdl.models.registry import register


# ------------------------------------------------------------------ Gaussian
def gaussian_ml(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_ML, sigma2_ML) = (mean(y), mean((y - mean(y))^2)) over the last axis."""
    mu = y.mean(-1)
    return mu, (y - mu[..., None]).pow(2).mean(-1)


@dataclass
class NormalInverseGamma:
    """NIG(m, k, a, b): sigma2 ~ InvGamma(a, b), mu | sigma2 ~ N(m, sigma2 / k)."""

    m: float
    k: float
    a: float
    b: float

    def mu_marginal(self) -> dist.StudentT:
        """The marginal of mu: Student-t with 2a degrees of freedom, scale sqrt(b / (a k))."""
        return dist.StudentT(2 * self.a, self.m, math.sqrt(self.b / (self.a * self.k)))

    def sigma2_marginal(self) -> dist.InverseGamma:
        return dist.InverseGamma(self.a, self.b)


def normal_inverse_gamma_posterior(y: torch.Tensor, m0: float, k0: float, a0: float,
                                   b0: float) -> NormalInverseGamma:
    """The conjugate update of NIG(m0, k0, a0, b0) by y (Murphy 2007, eq. 85-89)."""
    n = y.shape[-1]
    mean = float(y.mean())
    scatter = float((y - mean).pow(2).sum())
    k = k0 + n
    return NormalInverseGamma(m=(k0 * m0 + n * mean) / k, k=k, a=a0 + n / 2,
                              b=b0 + 0.5 * scatter + k0 * n * (mean - m0) ** 2 / (2 * k))


def gaussian_mle_data(num_points: int = 50, seed: int = 0) -> dict:
    """``num_points`` draws from N(2, 1.5^2), fixed seed."""
    return {"y": np.random.default_rng(seed).normal(2.0, 1.5, size=num_points)}


@register(
    "gaussian_mle",
    "normal mean and variance, conjugate NIG prior (--arg flat_priors=true: MAP = MLE)",
    data=gaussian_mle_data,
    schema={"y": DataField(("obs",))},
    dims={"y": ["obs"]},
)
def gaussian_mle(y, m0: float = 0.0, k0: float = 1.0, a0: float = 2.0, b0: float = 2.0,
                 flat_priors: bool = False):
    """y_i ~ N(mu, sigma2); (mu, sigma2) ~ NIG(m0, k0, a0, b0), or flat."""
    if flat_priors:
        sigma2 = pyro.sample("sigma2", Flat(y.var(), constraints.positive))
        mu = pyro.sample("mu", Flat(y.mean()))
    else:
        sigma2 = pyro.sample("sigma2", dist.InverseGamma(torch.as_tensor(a0, dtype=y.dtype),
                                                         torch.as_tensor(b0, dtype=y.dtype)))
        mu = pyro.sample("mu", dist.Normal(torch.as_tensor(m0, dtype=y.dtype), (sigma2 / k0).sqrt()))
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, sigma2.sqrt()), obs=y)


# ------------------------------------------------------------------ Bernoulli
def bernoulli_ml(y: torch.Tensor) -> torch.Tensor:
    """p_ML = mean(y)."""
    return y.mean(-1)


def beta_posterior(y: torch.Tensor, a: float, b: float) -> dist.Beta:
    """Beta(a + successes, b + failures)."""
    successes = float(y.sum())
    return dist.Beta(a + successes, b + y.shape[-1] - successes)


def bernoulli_mle_data(num_points: int = 40, p: float = 0.3, seed: int = 0) -> dict:
    """``num_points`` coin flips with success probability ``p``, fixed seed."""
    if not 0 <= p <= 1:
        raise BayesdlError(f"bernoulli_mle: p must be in [0, 1], got {p}")
    return {"y": (np.random.default_rng(seed).uniform(size=num_points) < p).astype(float)}


@register(
    "bernoulli_mle",
    "coin-flip probability, Beta(a, b) prior (--arg a=1 --arg b=1: MAP = MLE)",
    data=bernoulli_mle_data,
    schema={"y": DataField(("obs",), kind="int")},
    dims={"y": ["obs"]},
)
def bernoulli_mle(y, a: float = 2.0, b: float = 2.0):
    """y_i ~ Bernoulli(p), p ~ Beta(a, b); Beta(1, 1) is flat, so its MAP is the MLE."""
    p = pyro.sample("p", dist.Beta(torch.as_tensor(a, dtype=y.dtype), torch.as_tensor(b, dtype=y.dtype)))
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


# ------------------------------------------------------------------ multivariate, KL
def multivariate_gaussian_ml(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance with divisor n) of the rows of ``Y [n, d]``."""
    if Y.dim() != 2:
        raise BayesdlError(f"multivariate_gaussian_ml: Y must be [n, d], got {tuple(Y.shape)}")
    mean = Y.mean(0)
    centred = Y - mean
    return mean, centred.T @ centred / Y.shape[0]


def gaussian_kl(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor,
                cov2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, cov1) || N(mean2, cov2)) =
    [tr(S2^-1 S1) + (m2 - m1)' S2^-1 (m2 - m1) - d + log det S2 - log det S1] / 2."""
    L2 = torch.linalg.cholesky(cov2)
    d = mean1.shape[-1]
    solved = torch.cholesky_solve(cov1, L2)
    diff = (mean2 - mean1)[..., None]
    mahalanobis = (diff.transpose(-1, -2) @ torch.cholesky_solve(diff, L2))[..., 0, 0]
    logdet2 = 2 * torch.diagonal(L2, dim1=-2, dim2=-1).log().sum(-1)
    logdet1 = 2 * torch.diagonal(torch.linalg.cholesky(cov1), dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (torch.diagonal(solved, dim1=-2, dim2=-1).sum(-1) + mahalanobis - d + logdet2 - logdet1)


def monte_carlo_kl(p: dist.Distribution, q: dist.Distribution, num_samples: int,
                   seed: int = 0) -> tuple[float, float]:
    """E_p[log p(x) - log q(x)] from ``num_samples`` draws of p: (estimate, standard error)."""
    torch.manual_seed(seed)
    x = p.sample((num_samples,))
    terms = p.log_prob(x) - q.log_prob(x)
    return float(terms.mean()), float(terms.std() / math.sqrt(num_samples))


def fit_gaussian_by_kl(y: torch.Tensor, steps: int = 100) -> tuple[float, float]:
    """(mu, sigma2) minimising KL(p_data || N(mu, sigma2)) = -mean(log q(y)) + const, by
    L-BFGS: minimising the KL from the empirical distribution is maximum likelihood."""
    mu = torch.zeros((), dtype=y.dtype, requires_grad=True)
    log_sigma = torch.zeros((), dtype=y.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([mu, log_sigma], max_iter=steps, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        cross_entropy = -dist.Normal(mu, log_sigma.exp()).log_prob(y).mean()
        cross_entropy.backward()
        return cross_entropy

    optimiser.step(closure)
    return float(mu.detach()), float(log_sigma.detach().exp() ** 2)


__all__ = ["gaussian_ml", "NormalInverseGamma", "normal_inverse_gamma_posterior", "gaussian_mle",
           "gaussian_mle_data", "bernoulli_ml", "beta_posterior", "bernoulli_mle",
           "bernoulli_mle_data", "multivariate_gaussian_ml", "gaussian_kl", "monte_carlo_kl",
           "fit_gaussian_by_kl"]
