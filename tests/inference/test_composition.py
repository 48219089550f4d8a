"""Metropolis-within-Gibbs (sw+mh, gibbs+mh) against exact posteriors of small models
with discrete and continuous sites, ``reevaluate``, and the method registry.

Both reference models have a Gaussian mean ``mu ~ N(0, 1)`` with ``y ~ N(mu + shift(z), 1)``,
so ``mu`` integrates out in closed form: ``p(y | z) = N(y | shift(z), I + 11')`` and
``E[mu | y, z] = 1'(y - shift(z)) / (1 + n)``. Enumerating every ``z`` gives the exact
posterior mean of ``mu``, of ``mu^2`` and every label marginal; draws must match within
4 MCSE (ArviZ ESS).
"""

from __future__ import annotations

import itertools
import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.methods import METHODS
from bayesdl.inference.potts import Potts, PottsGraph
from bayesdl.inference.random_walk import RandomWalkKernel

Z_MAX = 4.0
BETA = 0.6
Y_GRID = np.array([[1.2, 0.9, -0.4], [1.6, -0.8, -1.1], [0.3, 1.4, -0.2]])
Y_MIX = np.array([-0.5, 0.4, 3.1, 2.2, 0.9, 3.8])


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def potts_regression(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    z = pyro.sample("z", Potts(2, PottsGraph.lattice(3, 3), BETA))
    pyro.sample("y", dist.Normal(mu + 2.0 * z.to(y.dtype) - 1.0, 1.0), obs=y)


def bernoulli_mixture(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(torch.full(y.shape, 0.3, dtype=y.dtype)))
        pyro.sample("y", dist.Normal(mu + 3.0 * z, 1.0), obs=y)


def exact_posterior(y: np.ndarray, shifts: np.ndarray, log_prior: np.ndarray):
    """``(E[mu], E[mu^2], P(z_i = 1))`` by enumeration; ``shifts [S, n]``, ``log_prior [S]``."""
    n = y.size
    r = y.reshape(-1)[None] - shifts
    log_lik = -0.5 * ((r**2).sum(1) - r.sum(1) ** 2 / (1 + n))  # N(y | shift, I + 11')
    log_post = log_prior + log_lik
    p = np.exp(log_post - log_post.max())
    p /= p.sum()
    mean_given = r.sum(1) / (1 + n)
    var_given = 1 / (1 + n)
    return (p * mean_given).sum(), (p * (var_given + mean_given**2)).sum(), p


def assert_within_mcse(draws: np.ndarray, exact: float, what: str) -> None:
    mcse = draws.std() / math.sqrt(float(az.ess(draws)))
    assert abs(draws.mean() - exact) < Z_MAX * mcse + 1e-12, f"{what}: {draws.mean()} vs {exact} ({mcse})"


@pytest.mark.parametrize("method", ["sw+mh", "gibbs+mh"])
def test_potts_field_with_a_gaussian_mean_matches_enumeration(method):
    idata = bayesdl.infer(potts_regression, {"y": torch.tensor(Y_GRID)}, method=method, chains=64,
                          warmup=200, draws=250, seed=1, progress=False)
    states = np.array(list(itertools.product([0, 1], repeat=9)))
    edges = PottsGraph.lattice(3, 3).edges.numpy()
    log_prior = BETA * (states[:, edges[:, 0]] == states[:, edges[:, 1]]).sum(1)
    mean, second, p = exact_posterior(Y_GRID, 2.0 * states - 1.0, log_prior)
    mu = idata.posterior["mu"].values
    assert_within_mcse(mu, mean, "E[mu]")
    assert_within_mcse(mu**2, second, "E[mu^2]")
    z = idata.posterior["z"].values.reshape(64, 250, 9)
    marginal = (p[:, None] * states).sum(0)
    for i in range(9):
        assert_within_mcse(z[..., i].astype(float), marginal[i], f"P(z_{i} = 1)")


def test_bernoulli_sites_by_gibbs_within_mh_match_enumeration():
    """Finite sites that are not a Potts field: all elements redrawn at once."""
    from composition_check import check_mixture_by_enumeration  # it imports this module

    check_mixture_by_enumeration("gibbs+mh", warmup=200, draws=250)


def test_chain_zero_equals_a_one_chain_run():
    data = {"y": torch.tensor(Y_GRID)}
    kwargs = dict(method="sw+mh", warmup=30, draws=30, seed=5, progress=False)
    batch = bayesdl.infer(potts_regression, data, chains=3, **kwargs)
    alone = bayesdl.infer(potts_regression, data, chains=1, **kwargs)
    assert np.array_equal(batch.posterior["z"].values[0], alone.posterior["z"].values[0])
    np.testing.assert_allclose(batch.posterior["mu"].values[0], alone.posterior["mu"].values[0],
                               rtol=0, atol=1e-9)


def test_random_walk_reevaluate_recomputes_the_cached_density():
    kernel = RandomWalkKernel(lambda x: -0.5 * (x**2).sum(-1))
    position = torch.tensor([[1.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    state = kernel.init(position, torch.zeros(2, dtype=torch.float64), 100)
    shifted = RandomWalkKernel(lambda x: -0.5 * ((x - 1) ** 2).sum(-1))
    again = shifted.reevaluate(state)
    torch.testing.assert_close(again.mh.log_density, torch.tensor([-0.5, -0.625], dtype=torch.float64))
    assert torch.equal(again.mh.position, position)
    # a step after reevaluate uses the new target
    rng = ChainRNG([0, 1])
    stepped, _ = shifted.step(rng, 0, again, warmup=False)
    torch.testing.assert_close(stepped.mh.log_density,
                               -0.5 * ((stepped.mh.position - 1) ** 2).sum(-1))


def test_methods_are_registered_with_their_options():
    for name in ("sw", "gibbs", "sw+mh", "gibbs+mh"):
        assert name in METHODS
    fields = METHODS["sw+mh"].options.__dataclass_fields__
    assert {"components", "discrete_sweeps", "init", "target_accept", "adapt_scale"} <= set(fields)


@pytest.mark.parametrize("method, model, message", [
    ("sw", potts_regression, "continuous sites"),
    ("sw+mh", bernoulli_mixture, "Potts site"),
    ("mh", potts_regression, "discrete"),
])
def test_wrong_method_for_the_model_is_a_one_line_error(method, model, message):
    data = {"y": torch.tensor(Y_GRID if model is potts_regression else Y_MIX)}
    with pytest.raises(BayesdlError, match=message):
        bayesdl.infer(model, data, method=method, chains=1, warmup=1, draws=1, progress=False)


def test_unknown_components_option_is_an_error():
    with pytest.raises(BayesdlError, match="components"):
        bayesdl.infer("ising", method="sw", chains=1, warmup=1, draws=1, args={"L": 4},
                      progress=False, components="bfs")
