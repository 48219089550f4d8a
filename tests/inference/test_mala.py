"""MALA: the Gaussian posteriors it samples, that its Hastings correction is needed, its
step-size adaptation, its seeding contract, its pyro.infer.MCMC adapter and (slow) the
posteriordb references.

Gaussian targets come from ``torch.distributions``; the conjugate linear regression is
the closed form of ``test_random_walk``. Tolerances: |z| <= 4 Monte Carlo standard errors.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from composition_check import check_mixture_by_enumeration
from posteriordb_check import check_kernel_against_reference
from pyro.infer import MCMC
from test_mh_proposals import assert_gaussian, rotated_gaussian, run_on
from test_random_walk import NOISE, Y5, conjugate_posterior, flat_draws, normal_mean_model

import bayesdl
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.mala import MALA, MALAKernel, MALAParams, _propose
from bayesdl.inference.metropolis import build_mh_step
from bayesdl.inference.settings import chain_seed
from bayesdl.models.regression import linear_regression, linear_regression_data

pytestmark = pytest.mark.filterwarnings("ignore:More chains:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def with_grad(target):
    """``x -> (log p, grad log p)`` of a torch distribution, by autograd."""

    def log_density_and_grad(x):
        x = x.detach().requires_grad_(True)
        value = target.log_prob(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad

    return log_density_and_grad


def test_correlated_gaussian_moments_and_acceptance():
    target = rotated_gaussian([4.0, 1.0, 0.25], seed=4)
    draws, stats = run_on(target, MALAKernel(with_grad(target)), 300, 400, 300)
    assert_gaussian(draws, target)
    # dual averaging fixes the averaged step, a little below the last iterates, so the
    # rate lands slightly above the target (as in Stan): 0.574 +- 0.08
    rate = float(stats["acceptance_rate"].mean())
    assert abs(rate - 0.574) < 0.08, rate
    step = stats["step_size"].numpy()
    assert np.all(step == step[:, :1]) and np.unique(step[:, 0]).size == 300  # per chain, fixed


def test_without_the_hastings_correction_the_answer_is_wrong():
    """The Langevin proposal is asymmetric: accepting it with the plain Metropolis ratio
    (same proposal, no log q terms) at the same step size gives detectably wrong variances."""
    target = rotated_gaussian([1.0, 1.0], seed=5)
    step_size, chains, draws = 1.6, 400, 300
    kernel = MALAKernel(with_grad(target), init_step_size=step_size, adapt_scale=False)
    uncorrected = build_mh_step(_propose)

    class Uncorrected(MALAKernel):
        def step(self, rng, step_index, state, warmup):
            params = MALAParams(torch.full_like(state.log_step_size, step_size), state.scale)
            mh, info = uncorrected(rng, step_index, state.mh, self.evaluate, params)
            return state._replace(mh=mh), info

    exact, _ = run_on(target, kernel, chains, 0, draws)
    wrong, _ = run_on(target, Uncorrected(with_grad(target), adapt_scale=False), chains, 0, draws)
    assert_gaussian(exact, target)
    x = wrong[..., 0]
    ess_sq = float(az.ess((x - x.mean()) ** 2, method="mean"))
    z_sd = (x.std() - 1.0) / (x.std() / np.sqrt(2 * ess_sq))
    assert abs(z_sd) > 10, z_sd


SHORT = dict(method="mala", warmup=300, draws=100, args={"noise": NOISE}, progress=False)


def test_conjugate_linear_regression_through_the_api():
    idata = bayesdl.infer("linear_regression", chains=200, seed=1, **{**SHORT, "draws": 300})
    mean, cov = conjugate_posterior()
    from test_random_walk import assert_moments_match

    assert_moments_match(flat_draws(idata), mean, np.sqrt(np.diag(cov)))
    assert set(idata.sample_stats.data_vars) == {"acceptance_rate", "lp", "step_size"}


def test_chain_c_equals_a_one_chain_run():
    """Chain c of a batch is the one-chain run seeded ``chain_seed(seed, c)``. On the
    normal-mean model the batched and the single evaluation round alike, so the chains
    agree to 1e-12 (on models with matrix products the last-bit differences of a batched
    product are amplified by step-size adaptation to ~1e-4, with the same decisions)."""
    data = {"y": torch.tensor(Y5)}
    run = dict(method="mala", warmup=200, draws=100, progress=False)
    batch = bayesdl.infer(normal_mean_model, data, chains=3, seed=13, **run).posterior["mu"].values
    for chain in (0, 2):
        alone = bayesdl.infer(normal_mean_model, data, chains=1, seed=chain_seed(13, chain),
                              **run).posterior["mu"].values[0]
        np.testing.assert_allclose(batch[chain], alone, rtol=0, atol=1e-12)
        assert (np.diff(batch[chain]) != 0).sum() >= 5
    assert not np.allclose(batch[0], batch[2])


def test_bad_options_are_errors():
    for options in ({"target_accept": 1.5}, {"init_step_size": -1.0}, {"step": 1}):
        with pytest.raises(BayesdlError):
            bayesdl.infer("linear_regression", chains=2, **{**SHORT, "warmup": 5, "draws": 5},
                          **options)


def test_mala_inside_pyro_mcmc():
    mean, _ = conjugate_posterior()
    data = linear_regression_data()
    with run_context(torch.device("cpu"), torch.float64):
        kwargs = {"X": torch.tensor(data["X"]), "y": torch.tensor(data["y"]), "noise": NOISE}
        pyro.set_rng_seed(0)
        mcmc = MCMC(MALA(linear_regression), num_samples=600, warmup_steps=400, disable_progbar=True)
        mcmc.run(**kwargs)
        samples = mcmc.get_samples(group_by_chain=True)
    draws = torch.cat([samples["alpha"][..., None], samples["beta"]], dim=-1).numpy()
    assert draws.shape == (1, 600, 4)
    for i in range(4):
        mcse = float(az.mcse(draws[..., i], method="mean"))
        assert abs(draws[..., i].mean() - mean[i]) < 4 * mcse, i
    assert 0.3 < mcmc.diagnostics()["acceptance rate"]["chain 0"] < 0.8


@pytest.mark.slow
@pytest.mark.parametrize("model, reference, chains, warmup, draws", [
    ("eight_schools", "eight_schools-eight_schools_noncentered", 64, 1000, 1000),
    ("kidiq", "kidiq-kidscore_momiq", 128, 3000, 1500),
], ids=["eight_schools", "kidiq"])
def test_mala_matches_posteriordb_reference(model, reference, chains, warmup, draws):
    check_kernel_against_reference(model, reference, "mala", chains, warmup, draws)


def test_gibbs_within_mala_matches_enumeration():
    """``gibbs+mala``: Bernoulli sites by Gibbs, the Gaussian mean by MALA; exact answers by
    enumerating the 2^6 labelings (the reference of test_composition)."""
    check_mixture_by_enumeration("gibbs+mala")
