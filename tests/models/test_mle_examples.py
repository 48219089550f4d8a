"""Maximum likelihood and conjugate posteriors (models/mle_examples.py) against closed
forms and peers.

- MLEs: Gaussian against SciPy's ``norm.fit``; multivariate against NumPy's biased
  covariance; the flat-prior MAP of ``gaussian_mle`` (L-BFGS on the model's own log
  density; slow: ``--method svi --opt guide=delta``) and of ``bernoulli_mle`` with a
  Beta(1, 1) prior against the closed forms (1e-6).
- Conjugate posteriors: the normal-inverse-gamma and Beta updates against brute-force
  quadrature of prior x likelihood on a grid (1e-4), and (slow) batched MH draws within
  5 Monte Carlo standard errors (ArviZ's mcse) of the closed-form posterior means.
- KL(N1 || N2) against torch.distributions' ``kl_divergence`` (1e-10) and a Monte Carlo
  estimate (5 standard errors); minimising the KL from the data's empirical distribution
  returns the MLE (1e-8).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro.distributions as dist
import pytest
import scipy.special
import scipy.stats
import torch
from pyro import poutine

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.models import REGISTRY
from bayesdl.models.mle_examples import (
    bernoulli_ml,
    bernoulli_mle,
    bernoulli_mle_data,
    beta_posterior,
    fit_gaussian_by_kl,
    gaussian_kl,
    gaussian_ml,
    gaussian_mle,
    gaussian_mle_data,
    monte_carlo_kl,
    multivariate_gaussian_ml,
    normal_inverse_gamma_posterior,
)

PRIOR = {"m0": 0.0, "k0": 1.0, "a0": 2.0, "b0": 2.0}  # gaussian_mle's defaults


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread (see tests/conftest.py)."""


def y_gauss() -> torch.Tensor:
    return torch.as_tensor(gaussian_mle_data()["y"], dtype=torch.float64)


def y_coin() -> torch.Tensor:
    return torch.as_tensor(bernoulli_mle_data()["y"], dtype=torch.float64)


def test_builtins_are_registered():
    assert {"gaussian_mle", "bernoulli_mle"} <= set(REGISTRY)


def test_gaussian_mle_equals_scipy_and_numpy():
    y = y_gauss()
    mu, sigma2 = gaussian_ml(y)
    loc, scale = scipy.stats.norm.fit(y.numpy())
    assert mu.item() == pytest.approx(loc, rel=1e-10)
    assert sigma2.item() == pytest.approx(scale**2, rel=1e-10)
    Y = torch.as_tensor(np.random.default_rng(3).normal(size=(200, 3)) @ np.diag([1.0, 2.0, 0.5]))
    mean, cov = multivariate_gaussian_ml(Y)
    np.testing.assert_allclose(mean.numpy(), Y.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(Y.numpy().T, bias=True), rtol=1e-10)
    with pytest.raises(BayesdlError, match="must be"):
        multivariate_gaussian_ml(Y[:, 0])


def maximise(model, data: dict, start: dict[str, float], positive: set[str] = frozenset(),
             unit: set[str] = frozenset()) -> dict[str, float]:
    """The maximiser of the model's log density by L-BFGS, positive sites on the log scale
    and sites in (0, 1) on the logit scale (the density itself is not transformed)."""
    names = list(start)
    free = torch.tensor([np.log(v) if n in positive else scipy.special.logit(v) if n in unit else v
                         for n, v in start.items()], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([free], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def values():
        return {n: free[i].exp() if n in positive else free[i].sigmoid() if n in unit else free[i]
                for i, n in enumerate(names)}

    def closure():
        optimiser.zero_grad()
        loss = -poutine.trace(poutine.condition(model, data=values())).get_trace(**data).log_prob_sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return {n: float(v.detach()) for n, v in values().items()}


def test_flat_prior_map_is_the_mle():
    y = y_gauss()
    found = maximise(gaussian_mle, {"y": y, "flat_priors": True}, {"mu": 0.0, "sigma2": 1.0},
                     positive={"sigma2"})
    mu, sigma2 = gaussian_ml(y)
    assert found["mu"] == pytest.approx(mu.item(), rel=1e-6)
    assert found["sigma2"] == pytest.approx(sigma2.item(), rel=1e-6)
    coin = y_coin()
    p_map = maximise(bernoulli_mle, {"y": coin, "a": 1.0, "b": 1.0}, {"p": 0.5}, unit={"p"})["p"]
    assert p_map == pytest.approx(bernoulli_ml(coin).item(), rel=1e-6)
    # with the default Beta(2, 2) prior the MAP is (k + 1) / (n + 2), not the MLE
    p_map = maximise(bernoulli_mle, {"y": coin}, {"p": 0.5}, unit={"p"})["p"]
    assert p_map == pytest.approx((coin.sum().item() + 1) / (coin.numel() + 2), rel=1e-6)


def test_normal_inverse_gamma_update_equals_grid_quadrature():
    y = y_gauss()
    post = normal_inverse_gamma_posterior(y, **PRIOR)
    mu = np.linspace(0.5, 3.8, 301)
    sigma2 = np.linspace(0.3, 6.0, 301)
    M, S = np.meshgrid(mu, sigma2, indexing="ij")
    n, mean, scatter = y.numel(), y.mean().item(), ((y - y.mean()) ** 2).sum().item()
    log_likelihood = -0.5 * n * np.log(2 * np.pi * S) - (scatter + n * (mean - M) ** 2) / (2 * S)
    log_density = (scipy.stats.invgamma.logpdf(S, PRIOR["a0"], scale=PRIOR["b0"])
                   + scipy.stats.norm.logpdf(M, PRIOR["m0"], np.sqrt(S / PRIOR["k0"])) + log_likelihood)
    weight = np.exp(log_density - log_density.max())
    weight /= weight.sum()
    assert (weight * M).sum() == pytest.approx(post.m, rel=1e-4)
    assert (weight * S).sum() == pytest.approx(float(post.sigma2_marginal().mean), rel=1e-4)
    assert (weight * (M - post.m) ** 2).sum() == pytest.approx(float(post.mu_marginal().variance), rel=1e-4)


def test_beta_update_equals_grid_quadrature():
    coin = y_coin()
    posterior = beta_posterior(coin, 2.0, 2.0)
    p = np.linspace(1e-6, 1 - 1e-6, 200001)
    k, n = coin.sum().item(), coin.numel()
    log_density = scipy.stats.beta.logpdf(p, 2.0, 2.0) + k * np.log(p) + (n - k) * np.log1p(-p)
    weight = np.exp(log_density - log_density.max())
    weight /= weight.sum()
    assert (weight * p).sum() == pytest.approx(float(posterior.mean), rel=1e-6)
    assert (weight * (p - float(posterior.mean)) ** 2).sum() == pytest.approx(float(posterior.variance),
                                                                             rel=1e-4)


def test_kl_closed_form_equals_torch_and_monte_carlo():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    m1, m2 = torch.as_tensor(rng.normal(size=3)), torch.as_tensor(rng.normal(size=3))
    S1, S2 = torch.as_tensor(A @ A.T + np.eye(3)), torch.as_tensor(B @ B.T + np.eye(3))
    p, q = dist.MultivariateNormal(m1, S1), dist.MultivariateNormal(m2, S2)
    ours = gaussian_kl(m1, S1, m2, S2).item()
    assert ours == pytest.approx(torch.distributions.kl_divergence(p, q).item(), rel=1e-10)
    estimate, standard_error = monte_carlo_kl(p, q, 20000, seed=1)
    assert abs(estimate - ours) < 5 * standard_error
    assert standard_error < 0.05 * ours
    assert gaussian_kl(m1, S1, m1, S1).item() == pytest.approx(0.0, abs=1e-12)


def test_minimising_kl_from_the_data_is_maximum_likelihood():
    y = y_gauss()
    mu, sigma2 = fit_gaussian_by_kl(y)
    mu_ml, sigma2_ml = gaussian_ml(y)
    assert mu == pytest.approx(mu_ml.item(), rel=1e-8)
    assert sigma2 == pytest.approx(sigma2_ml.item(), rel=1e-8)


@pytest.mark.slow
def test_svi_delta_with_flat_priors_gives_the_mle():
    idata = bayesdl.infer("gaussian_mle", method="svi", args={"flat_priors": True}, chains=1, draws=5,
                          progress=False, guide="delta")
    mu, sigma2 = gaussian_ml(y_gauss())
    assert float(idata.posterior["mu"].values[0, 0]) == pytest.approx(mu.item(), rel=1e-3)
    assert float(idata.posterior["sigma2"].values[0, 0]) == pytest.approx(sigma2.item(), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gaussian_mle", "bernoulli_mle"])
def test_batched_mh_matches_the_conjugate_posterior(name):
    idata = bayesdl.infer(name, method="mh", chains=100, warmup=1000, draws=1000, progress=False, seed=3)
    mcse = az.mcse(idata, method="mean")
    if name == "gaussian_mle":
        post = normal_inverse_gamma_posterior(y_gauss(), **PRIOR)
        truth = {"mu": post.m, "sigma2": float(post.sigma2_marginal().mean)}
    else:
        truth = {"p": float(beta_posterior(y_coin(), 2.0, 2.0).mean)}
    for site, value in truth.items():
        mean = float(idata.posterior[site].mean())
        assert abs(mean - value) < 5 * float(mcse[site]), (site, mean, value, float(mcse[site]))
        assert float(mcse[site]) < 0.02 * float(idata.posterior[site].std())  # the check has power
