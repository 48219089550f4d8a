"""The bootstrap particle filter against an exact Kalman filter (written here in NumPy)
on a linear-Gaussian state-space model: the log marginal likelihood of 32 batched
runs (exp of it is unbiased) within 4 between-run standard errors of the exact one,
filtering means within 4 between-run standard errors (plus an O(1/N) bias allowance
of 2% of the filtering sd) at every time step; resampling schemes are unbiased.
``filter_series`` (one series per run) passes the same checks on each of three series
at once, and on one series is the shared-series filter exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.particle_filter import (
    StateSpaceModel,
    bootstrap_particle_filter,
    filter_series,
    resample,
)

D = torch.float64
A = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q = np.array([[0.3, 0.05], [0.05, 0.2]])
H = np.array([[1.0, 0.5]])
R = np.array([[0.5]])
M0, P0 = np.array([0.5, -0.5]), np.eye(2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def simulate(steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(M0, P0)
    ys = []
    for t in range(steps):
        if t > 0:
            x = A @ x + rng.multivariate_normal(np.zeros(2), Q)
        ys.append(H @ x + rng.multivariate_normal(np.zeros(1), R))
    return np.array(ys)


def kalman(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Filtering means, covariances and the exact log marginal likelihood."""
    m, p, log_lik = M0.copy(), P0.copy(), 0.0
    means, covs = [], []
    for t, y in enumerate(ys):
        if t > 0:
            m, p = A @ m, A @ p @ A.T + Q
        s = H @ p @ H.T + R
        log_lik += stats.multivariate_normal(H @ m, s).logpdf(y)
        gain = p @ H.T @ np.linalg.inv(s)
        m = m + gain @ (y - H @ m)
        p = (np.eye(2) - gain @ H) @ p
        means.append(m)
        covs.append(p)
    return np.array(means), np.array(covs), float(log_lik)


def linear_gaussian() -> StateSpaceModel:
    a, h = torch.tensor(A, dtype=D), torch.tensor(H, dtype=D)
    q, r = torch.tensor(Q, dtype=D), torch.tensor(R, dtype=D)
    return StateSpaceModel(
        initial=lambda: torch.distributions.MultivariateNormal(torch.tensor(M0, dtype=D),
                                                               torch.tensor(P0, dtype=D)),
        transition=lambda x, t: torch.distributions.MultivariateNormal(x @ a.T, q),
        observation=lambda x, t: torch.distributions.MultivariateNormal(x @ h.T, r),
    )


@pytest.fixture(scope="module")
def filtered():
    ys = simulate(60)
    result = bootstrap_particle_filter(linear_gaussian(), torch.tensor(ys, dtype=D), 1000,
                                       num_runs=32, seed=1)
    return ys, result


def test_log_marginal_likelihood_matches_kalman(filtered):
    ys, result = filtered
    _, _, exact = kalman(ys)
    per_run = result.log_marginal_likelihood.numpy()
    ratio = np.exp(per_run - exact)  # unbiased for 1
    z = (ratio.mean() - 1) / (ratio.std(ddof=1) / math.sqrt(len(ratio)))
    assert abs(z) < 4, (per_run.mean(), exact)
    assert np.abs(per_run - exact).max() < 1.0


def test_filtering_means_and_variances_match_kalman(filtered):
    ys, result = filtered
    means, covs, _ = kalman(ys)
    pf = result.mean.numpy()  # [runs, T, 2]
    se = pf.std(0, ddof=1) / math.sqrt(pf.shape[0])
    sd = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
    err = np.abs(pf.mean(0) - means)
    assert np.all(err < 4 * se + 0.02 * sd), np.max(err / (se + 1e-12))
    var = result.variance.numpy().mean(0)
    np.testing.assert_allclose(var, sd**2, rtol=0.1)


def test_resampling_every_step_and_adaptive_agree_on_the_evidence(filtered):
    ys, _ = filtered
    _, _, exact = kalman(ys)
    for scheme in ("multinomial", "stratified"):
        result = bootstrap_particle_filter(linear_gaussian(), torch.tensor(ys, dtype=D), 500,
                                           num_runs=16, seed=2, resampling=scheme, ess_threshold=1.0)
        assert result.resampled.all()
        ratio = np.exp(result.log_marginal_likelihood.numpy() - exact)
        z = (ratio.mean() - 1) / (ratio.std(ddof=1) / math.sqrt(len(ratio)))
        assert abs(z) < 4, (scheme, z)


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "multinomial"])
def test_resampling_offspring_counts_are_unbiased(scheme):
    # E[number of copies of particle i] = N w_i for every scheme
    w = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1], dtype=D)
    runs = 20_000
    g = torch.Generator().manual_seed(3)
    index = resample(w.log().expand(runs, -1), scheme, generator=g)
    counts = torch.nn.functional.one_hot(index, 5).sum(1).double()  # [runs, 5]
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(runs)
    assert torch.all((mean - 5 * w).abs() < 4 * se + 1e-12), (mean, 5 * w)
    if scheme == "systematic":  # low variance: each count is floor or ceil of N w_i
        assert torch.all((counts - 5 * w).abs() < 1 + 1e-9)


def test_filter_series_matches_kalman_on_each_series():
    # three different series, each filtered by 16 independent runs in one batch of 48
    series = [simulate(40, seed=s) for s in (4, 5, 6)]
    copies = 16
    batch = torch.tensor(np.repeat(np.stack(series), copies, axis=0), dtype=D)  # [48, T, 1]
    result = filter_series(linear_gaussian(), batch, 500, seed=7)
    assert result.mean.shape == (3 * copies, 40, 2)
    for b, ys in enumerate(series):
        means, covs, exact = kalman(ys)
        runs = slice(b * copies, (b + 1) * copies)
        ratio = np.exp(result.log_marginal_likelihood[runs].numpy() - exact)
        z = (ratio.mean() - 1) / (ratio.std(ddof=1) / math.sqrt(copies))
        assert abs(z) < 4, (b, z)
        pf = result.mean[runs].numpy()
        se = pf.std(0, ddof=1) / math.sqrt(copies)
        sd = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
        err = np.abs(pf.mean(0) - means)
        # 5 SE: 240 means against an SE from 16 runs (t with 15 degrees of freedom)
        assert np.all(err < 5 * se + 0.02 * sd), (b, np.max(err / (se + 1e-12)))


def test_filter_series_of_one_series_is_the_shared_series_filter():
    ys = torch.tensor(simulate(20), dtype=D)
    one = filter_series(linear_gaussian(), ys[None], 200, seed=3, ess_threshold=0.7)
    shared = bootstrap_particle_filter(linear_gaussian(), ys, 200, seed=3, ess_threshold=0.7)
    for a, b in zip(one, shared, strict=True):
        torch.testing.assert_close(a, b)


def test_bad_input():
    with pytest.raises(BayesdlError, match="series must be"):
        filter_series(linear_gaussian(), torch.zeros(5, dtype=D), 10)

    ys = torch.zeros(5, 1, dtype=D)
    with pytest.raises(BayesdlError, match="resampling"):
        bootstrap_particle_filter(linear_gaussian(), ys, 10, resampling="residual")
    with pytest.raises(BayesdlError, match="NaN"):
        bootstrap_particle_filter(linear_gaussian(), ys * math.nan, 10)
    with pytest.raises(BayesdlError, match="ess_threshold"):
        bootstrap_particle_filter(linear_gaussian(), ys, 10, ess_threshold=2.0)
