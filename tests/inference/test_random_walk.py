"""Batched random-walk Metropolis: the posterior it samples, its seeding contract, that
it is batched (no host round trip per chain), its adaptation, and its Pyro adapter.

The reference posterior is Bayesian linear regression with a known noise scale (the
built-in ``linear_regression`` with ``noise=0.5``): alpha and beta are Gaussian a
posteriori in closed form. Tolerances are Monte Carlo standard errors from ArviZ's
effective sample sizes: |z| <= 4 for means and for standard deviations.
"""

from __future__ import annotations

import math
import time

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC

import bayesdl
from bayesdl.device import run_context
from bayesdl.inference import RandomWalkMH
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.random_walk import RandomWalkKernel
from bayesdl.inference.settings import chain_seed
from bayesdl.models.regression import linear_regression_data

NOISE = 0.5
PRIOR_SCALE = 10.0  # linear_regression's default prior N(0, 10^2) on alpha and beta
Z_MAX = 4.0

pytestmark = pytest.mark.filterwarnings("ignore:More chains:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def conjugate_posterior(num_points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and covariance of (alpha, beta) for linear_regression's data."""
    data = linear_regression_data(num_points=num_points)
    design = np.column_stack([np.ones(num_points), data["X"]])
    precision = design.T @ design / NOISE**2 + np.eye(design.shape[1]) / PRIOR_SCALE**2
    cov = np.linalg.inv(precision)
    return cov @ design.T @ data["y"] / NOISE**2, cov


def flat_draws(idata) -> np.ndarray:
    """``[chain, draw, 4]``: alpha then beta."""
    post = idata.posterior
    return np.concatenate([post["alpha"].values[..., None], post["beta"].values], axis=-1)


def assert_moments_match(draws: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
    """``draws [chain, draw, d]`` have the given means and sds, within |z| <= Z_MAX MCSE.

    The MCSE of the mean is sd / sqrt(ess); that of the sd is sd / sqrt(2 ess2), the
    delta method for a Gaussian with ess2 the ESS of the squared deviations.
    """
    for i in range(draws.shape[-1]):
        x = draws[..., i]
        m, s = x.mean(), x.std()
        ess = float(az.ess(x, method="bulk"))
        ess_sq = float(az.ess((x - m) ** 2, method="mean"))
        assert ess > 100 and ess_sq > 100, (i, ess, ess_sq)
        z_mean = (m - mean[i]) / (s / math.sqrt(ess))
        z_sd = (s - sd[i]) / (s / math.sqrt(2 * ess_sq))
        assert abs(z_mean) <= Z_MAX, f"coordinate {i}: mean {m} vs {mean[i]} (z = {z_mean:.2f})"
        assert abs(z_sd) <= Z_MAX, f"coordinate {i}: sd {s} vs {sd[i]} (z = {z_sd:.2f})"


@pytest.fixture(scope="module")
def many_chains():
    """1000 chains x 300 draws of the conjugate linear regression, all in one batch."""
    return bayesdl.infer("linear_regression", method="mh", chains=1000, warmup=300, draws=300,
                         seed=1, args={"noise": NOISE}, progress=False)


# ----------------------------------------------------------------- the posterior
def test_conjugate_linear_regression_moments(many_chains):
    mean, cov = conjugate_posterior()
    draws = flat_draws(many_chains)
    assert draws.shape == (1000, 300, 4)
    assert_moments_match(draws, mean, np.sqrt(np.diag(cov)))


def test_conjugate_linear_regression_correlations(many_chains):
    # the posterior correlations are far from zero: the proposal scales must not
    # distort them (per-coordinate scales, yet the target is correlated)
    mean, cov = conjugate_posterior()
    draws = flat_draws(many_chains).reshape(-1, 4)
    exact = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    got = np.corrcoef(draws.T)
    # 300,000 draws, ESS in the thousands: the sampling error of a correlation is
    # below (1 - rho^2) / sqrt(ESS) < 0.02
    np.testing.assert_allclose(got, exact, atol=0.05)


def test_acceptance_rate_near_target_in_four_dimensions(many_chains):
    # Roberts, Gelman & Gilks (1997): 0.234 for d > 1. acceptance_rate is min(1, ratio)
    # averaged over 300,000 steps; the spread comes from each chain's last step size.
    rate = float(many_chains.sample_stats["acceptance_rate"].mean())
    assert abs(rate - 0.234) < 0.02, rate
    assert many_chains.sample_stats["acceptance_rate"].shape == (1000, 300)


def test_step_size_is_adapted_per_chain(many_chains):
    step = many_chains.sample_stats["step_size"].values
    assert np.all(step[:, :1] == step)  # fixed after warm-up
    assert np.unique(step[:, 0]).size > 900  # every chain adapts on its own
    assert np.all(np.isfinite(step)) and np.all(step > 0)


def normal_mean_model(y, sigma=1.0):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 10.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def normal_mean_posterior(y: np.ndarray, sigma: float = 1.0, prior_sd: float = 10.0):
    precision = len(y) / sigma**2 + 1 / prior_sd**2
    return y.sum() / sigma**2 / precision, 1 / math.sqrt(precision)


Y5 = np.array([0.3, -1.2, 2.1, 0.8, 1.4])


@pytest.mark.parametrize("target, expected", [(None, 0.44), (0.7, 0.7)],
                         ids=["default-1d", "target-0.7"])
def test_acceptance_rate_follows_the_target(target, expected):
    opts = {} if target is None else {"target_accept": target}
    idata = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="mh", chains=400,
                          warmup=300, draws=100, progress=False, **opts)
    rate = float(idata.sample_stats["acceptance_rate"].mean())
    assert abs(rate - expected) < 0.02, rate
    mean, sd = normal_mean_posterior(Y5)
    assert_moments_match(idata.posterior["mu"].values[..., None], [mean], [sd])


# ----------------------------------------------------------------- seeding
MH_SHORT = dict(method="mh", warmup=200, draws=100, args={"noise": NOISE}, progress=False)


def test_same_seed_same_draws_and_other_seed_other_draws():
    a = flat_draws(bayesdl.infer("linear_regression", chains=4, seed=3, **MH_SHORT))
    b = flat_draws(bayesdl.infer("linear_regression", chains=4, seed=3, **MH_SHORT))
    c = flat_draws(bayesdl.infer("linear_regression", chains=4, seed=4, **MH_SHORT))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # nearby seeds share no chain: no chain of the seed-3 run reappears in the seed-4 run
    for i in range(4):
        for j in range(4):
            assert not np.allclose(a[i], c[j])


def test_chain_c_equals_a_one_chain_run_with_its_chain_seed():
    """Chain c of a batch is the one-chain run with seed ``chain_seed(seed, c)``.

    Not bitwise: a batch of 4 evaluates ``X @ beta`` as a matrix product whose
    summation order differs from the single chain's, so log densities differ in the
    last bits (~1e-13) and adapted step sizes by as much. Accept decisions agree, so the
    chains agree to rounding; a real coupling bug (shared RNG, shared adaptation) shows
    up as differences of order one.
    """
    batch = bayesdl.infer("linear_regression", chains=4, seed=7, **MH_SHORT)
    four = flat_draws(batch)
    for chain in (0, 2):
        alone = bayesdl.infer("linear_regression", chains=1, seed=chain_seed(7, chain),
                              **MH_SHORT)
        np.testing.assert_allclose(four[chain], flat_draws(alone)[0], rtol=0, atol=1e-9)
        moved = np.any(np.diff(four[chain], axis=0) != 0, axis=-1)
        moved_alone = np.any(np.diff(flat_draws(alone)[0], axis=0) != 0, axis=-1)
        assert np.array_equal(moved, moved_alone)
        assert moved.sum() >= 5  # the chain did move: the comparison is not vacuous
    assert not np.allclose(four[0], four[2])


# ----------------------------------------------------------------- batched
def _potential_and_start(chains: int):
    y = torch.tensor(Y5)
    potential = BatchedPotential(normal_mean_model, {"y": y})
    rng = ChainRNG(list(range(chains)))
    position, log_density = potential.initial_positions(rng)
    return potential, rng, position, log_density


def _no_host_sync(*args, **kwargs):
    raise AssertionError("the sampling loop read a tensor back to the host")


def test_ten_thousand_chains_in_one_batch_without_host_sync(monkeypatch):
    """10,000 chains run as one tensor: no .item()/bool()/float() inside the loop, and
    the time per step grows far slower than the number of chains."""
    with run_context(torch.device("cpu"), torch.float64):
        timings = {}
        for chains in (10, 10_000):
            potential, rng, position, log_density = _potential_and_start(chains)
            kernel = RandomWalkKernel(potential.log_density)
            with monkeypatch.context() as patch:
                for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                    patch.setattr(torch.Tensor, name, _no_host_sync)
                started = time.perf_counter()
                draws, stats, _ = run_kernel(kernel, rng, position, log_density, 150, 100,
                                             progress=False)
                timings[chains] = time.perf_counter() - started
    assert draws.shape == (10_000, 100, 1)
    assert stats["acceptance_rate"].shape == (10_000, 100)
    # a loop over chains (or a sync per chain) would make this ratio ~1000
    assert timings[10_000] < 50 * timings[10], timings
    mu = potential.constrain(draws)["mu"][..., 0].numpy()
    mean, sd = normal_mean_posterior(Y5)
    assert_moments_match(mu[..., None], [mean], [sd])


def test_host_sync_patch_is_effective(monkeypatch):
    # the test above relies on these patches catching a sync
    monkeypatch.setattr(torch.Tensor, "item", _no_host_sync)
    monkeypatch.setattr(torch.Tensor, "__bool__", _no_host_sync)
    with pytest.raises(AssertionError):
        torch.tensor(1.0).item()
    with pytest.raises(AssertionError):
        bool(torch.tensor(True))


def test_kernel_rejects_nan_and_minus_inf_proposals():
    # a log density that is NaN or -inf outside |x| < 1: chains must never leave
    def log_density(x):
        inside = x.abs().max(dim=-1).values < 1
        return torch.where(inside, -0.5 * (x**2).sum(-1), torch.where(
            x[:, 0] > 0, torch.full_like(x[:, 0], math.nan), torch.full_like(x[:, 0], -math.inf)))

    rng = ChainRNG(list(range(200)))
    start = torch.zeros(200, 2, dtype=torch.float64)
    kernel = RandomWalkKernel(log_density, init_step_size=3.0)
    draws, stats, _ = run_kernel(kernel, rng, start, log_density(start), 50, 200, progress=False)
    assert draws.abs().max() < 1
    assert torch.isfinite(stats["lp"]).all()
    assert ((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1)).all()


# ----------------------------------------------------------------- inside pyro.infer.MCMC
def test_random_walk_mh_inside_pyro_mcmc():
    mean, cov = conjugate_posterior()
    data = linear_regression_data()
    with run_context(torch.device("cpu"), torch.float64):
        kwargs = {"X": torch.tensor(data["X"]), "y": torch.tensor(data["y"]), "noise": NOISE}
        from bayesdl.models.regression import linear_regression

        pyro.set_rng_seed(0)
        mcmc = MCMC(RandomWalkMH(linear_regression), num_samples=3000, warmup_steps=1000,
                    num_chains=1, disable_progbar=True)
        mcmc.run(**kwargs)
        samples = mcmc.get_samples(group_by_chain=True)
        pyro.set_rng_seed(0)
        again = MCMC(RandomWalkMH(linear_regression), num_samples=50, warmup_steps=20,
                     num_chains=1, disable_progbar=True)
        again.run(**kwargs)
        pyro.set_rng_seed(0)
        third = MCMC(RandomWalkMH(linear_regression), num_samples=50, warmup_steps=20,
                     num_chains=1, disable_progbar=True)
        third.run(**kwargs)
    draws = torch.cat([samples["alpha"][..., None], samples["beta"]], dim=-1).numpy()
    assert draws.shape == (1, 3000, 4)
    assert_moments_match(draws, mean, np.sqrt(np.diag(cov)))
    rate = mcmc.diagnostics()["acceptance rate"]["chain 0"]
    assert 0.15 < rate < 0.35, rate
    # pyro.set_rng_seed makes the adapter repeat
    assert torch.equal(again.get_samples()["beta"], third.get_samples()["beta"])
