"""Latent priors p(z) (models/latent_priors.py), checked against scipy and closed forms.

- Gaussian-mixture and DP-mixture log densities and responsibilities equal scipy's
  mixture of ``multivariate_normal`` densities and Bayes' rule.
- Stick-breaking weights sum to one and, with v ~ Beta(1, alpha) (torch's sampler),
  have the closed-form means E[w_k] = alpha^(k-1) / (1 + alpha)^k (k < K), within 5 MCSE.
- The DP's parameter log prior equals scipy's Beta(1, alpha) log density of v plus the
  log Jacobian of the logit, plus the base measure's normal log density.
- The standard normal's closed-form KL equals torch.distributions.kl_divergence.
- Sample means of the mixtures equal sum_k w_k mu_k within 5 MCSE.
- Inside a Pyro model the parameters are registered, the DP adds its factor, and
  ``sample_sites`` makes the mixture's global parameters latent sites.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.models.latent_priors import (
    DirichletProcessPrior,
    GaussianMixturePrior,
    StandardNormalPrior,
    make_latent_prior,
    stick_breaking_weights,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread."""


def _perturbed(prior):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return prior


def _scipy_mixture_logpdf(prior, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = prior.weights().detach().numpy()
    loc, scale = prior.loc.detach().numpy(), prior.log_scale.exp().detach().numpy()
    comp = np.stack([np.log(w[k]) + stats.multivariate_normal(loc[k], np.diag(scale[k] ** 2)).logpdf(z)
                     for k in range(len(w))], -1)
    total = np.logaddexp.reduce(comp, -1)
    return total, np.exp(comp - total[:, None])


@pytest.mark.parametrize("prior", [GaussianMixturePrior(3, 4), DirichletProcessPrior(3, 0.7, 6)],
                         ids=["gmm", "dp"])
def test_mixture_density_and_responsibilities_match_scipy(prior):
    prior = _perturbed(prior)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 2
    expected, resp = _scipy_mixture_logpdf(prior, z.numpy())
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prior.responsibilities(z).detach().numpy(), resp, atol=1e-5)
    assert prior.weights().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_stick_breaking_weight_means_closed_form():
    alpha, K, n = 1.5, 6, 40000
    torch.manual_seed(1)
    v = torch.distributions.Beta(torch.ones(K - 1, dtype=torch.float64),
                                 alpha * torch.ones(K - 1, dtype=torch.float64)).sample((n,))
    w = stick_breaking_weights(v)
    assert torch.allclose(w.sum(-1), torch.ones(n, dtype=torch.float64))
    mean, se = w.mean(0)[:-1], w.std(0)[:-1] / n ** 0.5
    k = torch.arange(1, K, dtype=torch.float64)
    truth = alpha ** (k - 1) / (1 + alpha) ** k
    assert ((mean - truth).abs() < 5 * se).all(), (mean, truth, se)
    # the last weight is what the first K-1 sticks leave: (alpha / (1 + alpha))^(K-1)
    assert abs(w[:, -1].mean() - (alpha / (1 + alpha)) ** (K - 1)) < 5 * w[:, -1].std() / n ** 0.5


def test_dp_log_prior_matches_scipy():
    prior = _perturbed(DirichletProcessPrior(2, alpha=0.4, truncation=5, base_scale=2.0))
    v = prior.sticks().detach().double().numpy()
    expected = (stats.beta(1, 0.4).logpdf(v) + np.log(v * (1 - v))).sum() + \
        stats.norm(0, 2.0).logpdf(prior.loc.detach().double().numpy()).sum()
    assert prior.log_prior().item() == pytest.approx(expected, rel=1e-5)


def test_standard_normal_kl_and_density():
    loc, scale = torch.randn(7, 3), torch.rand(7, 3) + 0.2
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                           torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(StandardNormalPrior.kl_from_normal(loc, scale), kl, atol=1e-5)
    z = torch.randn(5, 3)
    np.testing.assert_allclose(StandardNormalPrior(3).log_prob(z).numpy(),
                               stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z.numpy()), rtol=1e-5)


@pytest.mark.parametrize("kind", ["gmm", "dp"])
def test_mixture_sample_mean(kind):
    prior = _perturbed(make_latent_prior(kind, 2))
    torch.manual_seed(0)
    z = prior.sample((20000,))
    truth = (prior.weights()[:, None] * prior.loc).sum(0).detach()
    se = z.std(0) / 20000 ** 0.5
    assert ((z.mean(0) - truth).abs() < 5 * se).all()


def test_pyro_pieces():
    dp = DirichletProcessPrior(2, 1.0, 4)

    def model():
        p_z = dp.pyro_distribution("p")
        with pyro.plate("n", 3):
            pyro.sample("z", p_z)

    pyro.clear_param_store()
    trace = poutine.trace(model).get_trace()
    assert "p_log_prior" in trace.nodes and trace.nodes["z"]["value"].shape == (3, 2)
    assert "p$$$stick_logit" in pyro.get_param_store()
    factor = trace.nodes["p_log_prior"]
    assert factor["fn"].log_prob(factor["value"]).item() == pytest.approx(dp.log_prior().item())

    def bayesian():
        p_z = dp.sample_sites("q")
        with pyro.plate("n", 3):
            pyro.sample("z", p_z)

    trace = poutine.trace(bayesian).get_trace()
    assert trace.nodes["q_v"]["value"].shape == (3,) and trace.nodes["q_loc"]["value"].shape == (4, 2)
    gmm_trace = poutine.trace(lambda: GaussianMixturePrior(2, 5).sample_sites("g")).get_trace()
    assert gmm_trace.nodes["g_weights"]["value"].shape == (5,)


def test_bad_input():
    with pytest.raises(BayesdlError, match="unknown latent prior"):
        make_latent_prior("vampire", 2)
    with pytest.raises(BayesdlError, match="alpha"):
        DirichletProcessPrior(2, alpha=-1.0)
    with pytest.raises(BayesdlError, match="last dimension"):
        GaussianMixturePrior(2).log_prob(torch.zeros(4, 3))
    with pytest.raises(BayesdlError):
        make_latent_prior("gmm", 2, nonsense=1)
