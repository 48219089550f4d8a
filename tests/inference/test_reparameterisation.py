"""Reparameterisations: each one-liner's draws follow the exact law (Kolmogorov-Smirnov
against scipy.stats, 20,000 draws, fixed seeds, reject below p = 1e-3), gradients are
right (torch.autograd.gradcheck in float64), and the pathwise gradient of an
expectation matches the closed-form derivative within Monte Carlo standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference import reparameterisation as rp

N = 20_000
P_MIN = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _u(seed: int, n: int = N) -> torch.Tensor:
    return rp.uniform_noise((n,), _gen(seed))


CASES = {
    "exponential": (lambda: rp.exponential(_u(1), rate=2.5), stats.expon(scale=1 / 2.5).cdf),
    "cauchy": (lambda: rp.cauchy(_u(2), loc=1.0, scale=3.0), stats.cauchy(1.0, 3.0).cdf),
    "laplace_log_ratio": (lambda: rp.laplace_log_ratio(_u(3), _u(4), loc=-1.0, scale=0.5),
                          stats.laplace(-1.0, 0.5).cdf),
    "laplace_inverse_cdf": (lambda: rp.laplace_inverse_cdf(_u(5) - 0.5, loc=2.0, scale=1.5),
                            stats.laplace(2.0, 1.5).cdf),
    "box_muller_cos": (lambda: rp.box_muller(_u(6), _u(7))[0], stats.norm().cdf),
    "box_muller_sin": (lambda: rp.box_muller(_u(6), _u(7))[1], stats.norm().cdf),
    "log_normal": (lambda: rp.log_normal(rp.normal_noise((N,), _gen(8)), loc=0.3, scale=0.7),
                   stats.lognorm(s=0.7, scale=math.exp(0.3)).cdf),
    "inverse_gamma": (lambda: rp.inverse_gamma(
        torch.distributions.Gamma(torch.tensor(3.0, dtype=torch.float64), 1.0).sample((N,)), 2.0),
        stats.invgamma(a=3.0, scale=2.0).cdf),
}


@pytest.mark.parametrize("name", list(CASES))
def test_draws_follow_the_exact_distribution(name):
    torch.manual_seed(0)  # only the inverse-gamma case draws its gamma noise from torch
    draw, cdf = CASES[name]
    x = draw().numpy()
    assert x.shape == (N,)
    assert stats.kstest(x, cdf).pvalue > P_MIN


def test_box_muller_pair_is_independent():
    z1, z2 = rp.box_muller(_u(11), _u(12))
    r = np.corrcoef(z1.numpy(), z2.numpy())[0, 1]
    assert abs(r) < 4 / math.sqrt(N)
    # the squared radius is chi-square with 2 degrees of freedom
    assert stats.kstest((z1**2 + z2**2).numpy(), stats.chi2(2).cdf).pvalue > P_MIN


def test_multivariate_gaussian_mu_plus_r_eps():
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6, 0.3], [0.6, 1.0, -0.4], [0.3, -0.4, 1.5]], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    x = rp.gaussian(rp.normal_noise((N, 3), _gen(13)), loc, chol)
    # every projection a^T x is N(a^T mu, a^T S a)
    for a in torch.eye(3, dtype=torch.float64).unbind() + (torch.tensor([1.0, 1.0, -1.0]).double(),):
        proj = (x @ a).numpy()
        ref = stats.norm(float(a @ loc), math.sqrt(float(a @ cov @ a)))
        assert stats.kstest(proj, ref.cdf).pvalue > P_MIN
    with pytest.raises(BayesdlError, match="coordinates"):
        rp.gaussian(torch.zeros(5, 2, dtype=torch.float64), loc, chol)


def test_rademacher_is_a_fair_sign():
    coin = torch.bernoulli(torch.full((N,), 0.5, dtype=torch.float64), generator=_gen(14))
    signs = rp.rademacher(coin)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    count = int((signs > 0).sum())
    assert stats.binomtest(count, N, 0.5).pvalue > P_MIN


def _d(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("name", ["exponential", "cauchy", "laplace_log_ratio",
                                  "laplace_inverse_cdf", "gaussian", "log_normal", "inverse_gamma"])
def test_gradcheck_in_float64(name):
    u, u2 = _u(21, 7), _u(22, 7)
    eps = rp.normal_noise((7, 2), _gen(23))
    functions = {
        "exponential": (lambda r: rp.exponential(u, r), (_d(1.7),)),
        "cauchy": (lambda m, s: rp.cauchy(u, m, s), (_d(0.2), _d(1.3))),
        "laplace_log_ratio": (lambda m, s: rp.laplace_log_ratio(u, u2, m, s), (_d(0.2), _d(1.3))),
        "laplace_inverse_cdf": (lambda m, s: rp.laplace_inverse_cdf(u - 0.5, m, s), (_d(0.2), _d(1.3))),
        "gaussian": (lambda m, r: rp.gaussian(eps, m, r),
                     (torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True),
                      torch.tensor([[1.2, 0.0], [0.4, 0.8]], dtype=torch.float64, requires_grad=True))),
        "log_normal": (lambda m, s: rp.log_normal(eps[:, 0], m, s), (_d(0.2), _d(0.6))),
        "inverse_gamma": (lambda g, s: rp.inverse_gamma(g, s),
                          (torch.tensor([0.7, 1.9, 3.2], dtype=torch.float64, requires_grad=True),
                           _d(2.0))),
    }
    function, inputs = functions[name]
    assert torch.autograd.gradcheck(function, inputs)


def test_pathwise_gradient_matches_closed_form():
    # d/dmu E[X] and d/dsigma E[X] for X ~ LogNormal(mu, sigma): E[X] = exp(mu + sigma^2 / 2)
    eps = rp.normal_noise((N,), _gen(31))
    params = torch.tensor([0.3, 0.5], dtype=torch.float64)
    per_draw = torch.func.vmap(torch.func.grad(lambda p, e: rp.log_normal(e, p[0], p[1])),
                               in_dims=(None, 0))(params, eps)
    mean_x = math.exp(0.3 + 0.125)
    for grad, exact in ((per_draw[:, 0], mean_x), (per_draw[:, 1], 0.5 * mean_x)):
        estimate, se = float(grad.mean()), float(grad.std()) / math.sqrt(N)
        assert abs(estimate - exact) < 4 * se, (estimate, exact, se)
