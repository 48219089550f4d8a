"""Elliptical slice sampling: closed-form Gaussian posteriors (dense and diagonal priors),
a two-point GP classification checked by quadrature, the prior detection and its
errors, the seeding contract and the pyro.infer.MCMC adapter.

Tolerances are Monte Carlo standard errors (|z| <= 4, ``assert_moments_match``).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC
from scipy.special import expit
from test_random_walk import NOISE, assert_moments_match, conjugate_posterior, flat_draws

import bayesdl
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.elliptical_slice import EllipticalSlice, gaussian_prior
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.settings import chain_seed

pytestmark = pytest.mark.filterwarnings("ignore:More chains:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


PRIOR_MEAN = np.array([1.0, -1.0, 0.5])
PRIOR_COV = np.array([[2.0, 0.8, 0.3], [0.8, 1.0, -0.4], [0.3, -0.4, 1.5]])
DESIGN = np.random.default_rng(0).normal(size=(6, 3))
Y = DESIGN @ np.array([0.3, -0.2, 1.0]) + 0.8 * np.random.default_rng(1).normal(size=6)
SIGMA = 0.8


def gaussian_linear_model(A, y, sigma):
    x = pyro.sample("x", dist.MultivariateNormal(torch.as_tensor(PRIOR_MEAN, dtype=A.dtype),
                                                 torch.as_tensor(PRIOR_COV, dtype=A.dtype)))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(A @ x, sigma), obs=y)


def gaussian_linear_posterior() -> tuple[np.ndarray, np.ndarray]:
    prior_precision = np.linalg.inv(PRIOR_COV)
    cov = np.linalg.inv(prior_precision + DESIGN.T @ DESIGN / SIGMA**2)
    return cov @ (prior_precision @ PRIOR_MEAN + DESIGN.T @ Y / SIGMA**2), cov


def _data():
    return {"A": torch.tensor(DESIGN), "y": torch.tensor(Y), "sigma": SIGMA}


def test_correlated_gaussian_prior_and_likelihood():
    idata = bayesdl.infer(gaussian_linear_model, _data(), method="ess", chains=64, warmup=10,
                          draws=100, seed=1, progress=False)
    mean, cov = gaussian_linear_posterior()
    draws = idata.posterior["x"].values
    assert_moments_match(draws, mean, np.sqrt(np.diag(cov)))
    got = np.corrcoef(draws.reshape(-1, 3).T)
    exact = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    # the standard error of a sample correlation is (1 - rho^2) / sqrt(n), n the ESS
    ess = min(float(az.ess(draws[..., i])) for i in range(3))
    assert np.all(np.abs(got - exact) <= 4 * (1 - exact**2) / np.sqrt(ess) + 1e-12), (got, exact)
    assert set(idata.sample_stats.data_vars) == {"lp", "n_steps"}
    assert (idata.sample_stats["n_steps"] >= 1).all()


def test_prior_is_read_from_the_trace():
    potential = BatchedPotential(gaussian_linear_model, _data())
    prior = gaussian_prior(potential)
    torch.testing.assert_close(prior.mean, torch.tensor(PRIOR_MEAN))
    torch.testing.assert_close(prior.factor @ prior.factor.T, torch.tensor(PRIOR_COV))
    # the likelihood part is the model's log density minus this prior
    x = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    expected = torch.distributions.Normal(torch.tensor(DESIGN) @ x[0], SIGMA).log_prob(
        torch.tensor(Y)).sum()
    gauss = torch.distributions.MultivariateNormal(torch.tensor(PRIOR_MEAN), torch.tensor(PRIOR_COV))
    torch.testing.assert_close(potential.log_density(x)[0] - gauss.log_prob(x)[0], expected)


def test_conjugate_linear_regression_diagonal_prior():
    # a prior 200x wider than the posterior: each step shrinks the angle ~8 times
    idata = bayesdl.infer("linear_regression", method="ess", chains=32, warmup=40, draws=120,
                          seed=2, args={"noise": NOISE}, progress=False)
    mean, cov = conjugate_posterior()
    assert_moments_match(flat_draws(idata), mean, np.sqrt(np.diag(cov)))


LABELS = np.array([[1.0, 0.0]] * 4)  # four replicate labels at each of two inputs
KERNEL = np.array([[1.5, 1.0], [1.0, 1.5]])  # correlated latent values


def gp_classification(y):
    f = pyro.sample("f", dist.MultivariateNormal(torch.zeros(2, dtype=y.dtype),
                                                 torch.as_tensor(KERNEL, dtype=y.dtype)))
    with pyro.plate("replicate", y.shape[0], dim=-2), pyro.plate("points", 2, dim=-1):
        pyro.sample("y", dist.Bernoulli(logits=f), obs=y)


def gp_classification_moments() -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of f by quadrature on a fine grid (±9 prior sds)."""
    grid = np.linspace(-11, 11, 1101)
    f1, f2 = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([f1, f2], axis=-1)
    precision = np.linalg.inv(KERNEL)
    log_prior = -0.5 * np.einsum("...i,ij,...j->...", points, precision, points)
    prob = expit(points)
    log_lik = (LABELS.sum(0) * np.log(prob) + (1 - LABELS).sum(0) * np.log1p(-prob)).sum(-1)
    weight = np.exp(log_prior + log_lik - (log_prior + log_lik).max())
    weight /= weight.sum()
    mean = np.array([(weight * f1).sum(), (weight * f2).sum()])
    sd = np.sqrt(np.array([(weight * f1**2).sum(), (weight * f2**2).sum()]) - mean**2)
    return mean, sd


def test_gp_classification_matches_quadrature():
    idata = bayesdl.infer(gp_classification, {"y": torch.tensor(LABELS)}, method="ess",
                          chains=64, warmup=10, draws=150, seed=3, progress=False)
    mean, sd = gp_classification_moments()
    assert abs(mean[0] - mean[1]) > 0.5  # the labels pull the two values apart
    assert_moments_match(idata.posterior["f"].values, mean, sd)


def hierarchical(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    theta = pyro.sample("theta", dist.Normal(mu, 1.0))
    pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


@pytest.mark.parametrize("model, data, site", [
    ("eight_schools", None, "tau"),  # HalfCauchy
    ("kidiq", None, "beta"),  # flat (masked) prior
    (hierarchical, {"y": torch.tensor(0.5)}, "theta"),  # a Gaussian whose mean is latent
], ids=["half-cauchy", "masked", "dependent"])
def test_models_without_a_fixed_gaussian_prior_are_refused(model, data, site):
    with pytest.raises(BayesdlError, match=f"'{site}'"):
        bayesdl.infer(model, data, method="ess", chains=2, warmup=5, draws=5, progress=False)


def test_chain_c_equals_a_one_chain_run():
    run = dict(method="ess", warmup=20, draws=50, progress=False)
    batch = bayesdl.infer(gp_classification, {"y": torch.tensor(LABELS)}, chains=3, seed=19,
                          **run).posterior["f"].values
    for chain in (0, 2):
        alone = bayesdl.infer(gp_classification, {"y": torch.tensor(LABELS)}, chains=1,
                              seed=chain_seed(19, chain), **run).posterior["f"].values[0]
        np.testing.assert_allclose(batch[chain], alone, rtol=0, atol=1e-9)
    assert not np.allclose(batch[0], batch[2])


def test_elliptical_slice_inside_pyro_mcmc():
    with run_context(torch.device("cpu"), torch.float64):
        pyro.set_rng_seed(0)
        mcmc = MCMC(EllipticalSlice(gp_classification), num_samples=600, warmup_steps=20,
                    disable_progbar=True)
        mcmc.run(y=torch.tensor(LABELS))
        f = mcmc.get_samples(group_by_chain=True)["f"].numpy()
    mean, sd = gp_classification_moments()
    assert f.shape == (1, 600, 2)
    assert_moments_match(f, mean, sd)
