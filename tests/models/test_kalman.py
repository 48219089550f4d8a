"""The Kalman filter and RTS smoother (models/kalman.py) against statsmodels and Pyro.

statsmodels' state-space filter (Cython, written by others) with a known initial state
is the peer: log-likelihood, filtered and smoothed means and covariances agree to 1e-6
(in float64 they agree to ~1e-9), with missing observations (single components and
whole rows). Pyro's ``GaussianHMM`` (a different algorithm: a parallel scan over
Gaussian factors) checks the likelihood once more. The parallel-in-time filter equals
the sequential one to 1e-8; batching, vmap and autograd are checked against loops and
finite differences.
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import statsmodels.api as statsmodels_api
import torch

from bayesdl.errors import BayesdlError
from bayesdl.models.kalman import kalman_filter, parallel_kalman_filter, rts_smoother


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread (see tests/conftest.py)."""


def random_model(d: int, p: int, T: int, seed: int, missing: bool = True):
    rng = np.random.default_rng(seed)
    F = 0.5 * rng.normal(size=(d, d))
    H = rng.normal(size=(p, d))
    A, B = rng.normal(size=(d, d)), rng.normal(size=(p, p))
    Q, R = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(p)
    m0, P0 = rng.normal(size=d), 2.0 * np.eye(d)
    y = rng.normal(size=(T, p)) * 2
    if missing:
        y[5, 0] = np.nan  # one component
        y[10] = np.nan  # a whole row
        y[0, -1] = np.nan
        y[T - 1] = np.nan
    return y, F, H, Q, R, m0, P0


def statsmodels_smooth(y, F, H, Q, R, m0, P0):
    model = statsmodels_api.tsa.statespace.MLEModel(y, k_states=F.shape[0])
    model["design"], model["obs_cov"], model["transition"] = H, R, F
    model["selection"], model["state_cov"] = np.eye(F.shape[0]), Q
    model.ssm.initialize_known(m0, P0)
    return model.ssm.smooth()


def as_torch(*arrays):
    return tuple(torch.as_tensor(a, dtype=torch.float64) for a in arrays)


@pytest.mark.parametrize("d,p", [(1, 1), (2, 1), (2, 2), (3, 2), (1, 3)])
def test_filter_and_smoother_equal_statsmodels_with_missing_values(d, p):
    arrays = random_model(d, p, T=40, seed=d * 10 + p)
    reference = statsmodels_smooth(*arrays)
    y, F, H, Q, R, m0, P0 = as_torch(*arrays)
    result = kalman_filter(y, F, H, Q, R, m0, P0)
    smoothed_mean, smoothed_cov = rts_smoother(result, F)
    assert result.log_likelihood.item() == pytest.approx(reference.llf_obs.sum(), rel=1e-9)
    np.testing.assert_allclose(result.filtered_mean.numpy(), reference.filtered_state.T, atol=1e-6)
    np.testing.assert_allclose(result.filtered_cov.numpy(),
                               reference.filtered_state_cov.transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(result.predicted_mean.numpy(), reference.predicted_state[:, :-1].T,
                               atol=1e-6)
    np.testing.assert_allclose(smoothed_mean.numpy(), reference.smoothed_state.T, atol=1e-6)
    np.testing.assert_allclose(smoothed_cov.numpy(), reference.smoothed_state_cov.transpose(2, 0, 1),
                               atol=1e-6)


def test_likelihood_equals_pyro_gaussian_hmm():
    y, F, H, Q, R, m0, P0 = as_torch(*random_model(2, 3, T=30, seed=3, missing=False))
    # GaussianHMM starts one transition before the first observation: x_1 = x_0 F' + noise
    x0_mean, x0_cov = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    hmm = dist.GaussianHMM(dist.MultivariateNormal(x0_mean, x0_cov), F.T,
                           dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), Q), H.T,
                           dist.MultivariateNormal(torch.zeros(3, dtype=torch.float64), R),
                           duration=30)
    ours = kalman_filter(y, F, H, Q, R, F @ x0_mean, F @ x0_cov @ F.T + Q).log_likelihood
    assert ours.item() == pytest.approx(hmm.log_prob(y).item(), rel=1e-10)


@pytest.mark.parametrize("d,p", [(1, 1), (2, 2), (3, 1)])
def test_parallel_scan_equals_sequential_filter(d, p):
    y, F, H, Q, R, m0, P0 = as_torch(*random_model(d, p, T=1000, seed=7))
    sequential = kalman_filter(y, F, H, Q, R, m0, P0)
    parallel = parallel_kalman_filter(y, F, H, Q, R, m0, P0)
    for a, b in zip(sequential, parallel, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-8)


def test_batched_parameters_equal_one_at_a_time_and_vmap():
    y, F, H, Q, R, m0, P0 = as_torch(*random_model(2, 2, T=25, seed=1))
    scales = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    batched = kalman_filter(y, F, H, scales[:, None, None] * Q, R, m0, P0)
    for i, s in enumerate(scales):
        one = kalman_filter(y, F, H, s * Q, R, m0, P0)
        torch.testing.assert_close(batched.log_likelihood[i], one.log_likelihood)
        torch.testing.assert_close(batched.filtered_cov[i], one.filtered_cov)
        torch.testing.assert_close(parallel_kalman_filter(y, F, H, s * Q, R, m0, P0).log_likelihood,
                                   one.log_likelihood)
    mapped = torch.func.vmap(lambda s: kalman_filter(y, F, H, s * Q, R, m0, P0).log_likelihood)(scales)
    torch.testing.assert_close(mapped, batched.log_likelihood)


def test_gradient_equals_finite_differences():
    y, F, H, Q, R, m0, P0 = as_torch(*random_model(2, 1, T=12, seed=2))

    def log_likelihood(log_q, log_r):
        return parallel_kalman_filter(y, F, H, log_q.exp() * Q, log_r.exp() * R, m0, P0).log_likelihood

    inputs = (torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
              torch.tensor(-0.2, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(log_likelihood, inputs)


def test_bad_shapes_are_bayesdl_errors():
    y, F, H, Q, R, m0, P0 = as_torch(*random_model(2, 2, T=12, seed=0))
    with pytest.raises(BayesdlError, match="H must end in"):
        kalman_filter(y, F, H[:1], Q, R, m0, P0)
    with pytest.raises(BayesdlError, match="y must be"):
        parallel_kalman_filter(y[:, 0], F, H, Q, R, m0, P0)
