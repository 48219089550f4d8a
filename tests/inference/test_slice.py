"""Coordinate-wise slice sampling: Gaussian and bounded targets it samples, its stepping
out and shrinkage, its seeding contract, its pyro.infer.MCMC adapter and (slow) the
posteriordb references.

References: ``torch.distributions`` Gaussians, scipy's Gamma moments, the conjugate
normal-mean posterior of ``test_random_walk``. Tolerances: |z| <= 4 MCSE.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import scipy.stats
import torch
from composition_check import check_mixture_by_enumeration
from posteriordb_check import check_kernel_against_reference
from pyro.infer import MCMC
from test_mh_proposals import assert_gaussian, rotated_gaussian, run_on
from test_random_walk import Y5, assert_moments_match, normal_mean_model, normal_mean_posterior

import bayesdl
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.settings import chain_seed
from bayesdl.inference.slice import Slice, SliceKernel

pytestmark = pytest.mark.filterwarnings("ignore:More chains:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def test_correlated_gaussian_moments():
    target = rotated_gaussian([4.0, 1.0, 0.25], seed=6)
    draws, stats = run_on(target, SliceKernel(target.log_prob), 300, 150, 150)
    assert_gaussian(draws, target)
    assert set(stats) == {"lp", "n_steps"}
    # per coordinate: >= 2 evaluations (a shrinkage draw, and both ends checked once
    # with adapted widths), and few more: widths of 3 marginal sds
    per_coordinate = stats["n_steps"].mean().item() / 3
    assert 2 <= per_coordinate < 8, per_coordinate


@pytest.mark.parametrize("init_width, max_steps_out", [(0.2, 100), (50.0, 0)],
                         ids=["narrow-steps-out", "wide-shrinks-only"])
def test_gamma_target_with_a_boundary(init_width, max_steps_out):
    """Gamma(3, 1) on x > 0 (-inf below): widths fixed far too narrow (stepping out does
    the work) or far too wide without stepping out (shrinkage does); both are exact."""
    gamma = torch.distributions.Gamma(torch.tensor(3.0, dtype=torch.float64), 1.0)

    def log_density(x):
        inside = x[:, 0] > 0
        return torch.where(inside, gamma.log_prob(x[:, 0].clamp_min(1e-300)), -math.inf)

    chains = 300
    start = torch.full((chains, 1), 2.0, dtype=torch.float64)
    kernel = SliceKernel(log_density, init_width=init_width, max_steps_out=max_steps_out,
                         adapt_width=False)
    draws, stats, _ = run_kernel(kernel, ChainRNG(list(range(chains))), start, log_density(start),
                                 50, 200, progress=False)
    truth = scipy.stats.gamma(3.0)
    assert (draws > 0).all()
    assert_moments_match(draws.numpy(), [truth.mean()], [truth.std()])
    # the slice of Gamma(3, 1) is ~4 wide: ~20 steps out from 0.2, ~log2(50 / 4) shrinks from 50
    assert stats["n_steps"].mean() > (15 if max_steps_out else 3), stats["n_steps"].mean()


def test_normal_mean_posterior_through_the_api():
    idata = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="slice", chains=200,
                          warmup=150, draws=150, seed=3, progress=False)
    mean, sd = normal_mean_posterior(Y5)
    assert_moments_match(idata.posterior["mu"].values[..., None], [mean], [sd])
    assert set(idata.sample_stats.data_vars) == {"lp", "n_steps"}


def test_chain_c_equals_a_one_chain_run():
    data = {"y": torch.tensor(Y5)}
    run = dict(method="slice", warmup=150, draws=50, progress=False)
    batch = bayesdl.infer(normal_mean_model, data, chains=3, seed=17, **run).posterior["mu"].values
    for chain in (0, 2):
        alone = bayesdl.infer(normal_mean_model, data, chains=1, seed=chain_seed(17, chain),
                              **run).posterior["mu"].values[0]
        np.testing.assert_allclose(batch[chain], alone, rtol=0, atol=1e-12)
    assert not np.allclose(batch[0], batch[2])


def test_bad_options_are_errors():
    data = {"y": torch.tensor(Y5)}
    for options in ({"max_shrink": 0}, {"init_width": -1.0}, {"width_scale": math.nan},
                    {"max_steps_out": -2}, {"width": 1.0}):
        with pytest.raises(BayesdlError):
            bayesdl.infer(normal_mean_model, data, method="slice", chains=2, warmup=5, draws=5,
                          progress=False, **options)


def test_slice_inside_pyro_mcmc():
    y = torch.tensor(Y5)
    with run_context(torch.device("cpu"), torch.float64):
        pyro.set_rng_seed(0)
        mcmc = MCMC(Slice(normal_mean_model), num_samples=500, warmup_steps=150,
                    disable_progbar=True)
        mcmc.run(y=y)
        mu = mcmc.get_samples(group_by_chain=True)["mu"].numpy()
    mean, sd = normal_mean_posterior(Y5)
    assert mu.shape == (1, 500)
    assert_moments_match(mu[..., None], [mean], [sd])


@pytest.mark.slow
@pytest.mark.parametrize("model, reference, chains, warmup, draws", [
    ("eight_schools", "eight_schools-eight_schools_noncentered", 32, 200, 300),
    # corr(beta[1], beta[2]) = -0.99: coordinate updates mix slowly (ESS ~0.01 per sweep)
    ("kidiq", "kidiq-kidscore_momiq", 128, 500, 1000),
], ids=["eight_schools", "kidiq"])
def test_slice_matches_posteriordb_reference(model, reference, chains, warmup, draws):
    check_kernel_against_reference(model, reference, "slice", chains, warmup, draws)


def test_gibbs_within_slice_matches_enumeration():
    """``gibbs+slice``: Bernoulli sites by Gibbs, the Gaussian mean by slice sampling; exact
    answers by enumerating the 2^6 labelings (the reference of test_composition)."""
    check_mixture_by_enumeration("gibbs+slice")
