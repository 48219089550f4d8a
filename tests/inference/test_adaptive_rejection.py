"""Adaptive rejection sampling: draws of several log-concave densities sampled in one
batch follow scipy's exact laws (KS, fixed seed, reject below p = 1e-3); the hull
tightens (acceptance rate close to one); densities that are not log-concave, and
starts that cannot bound the tails, are errors."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.adaptive_rejection import adaptive_rejection_sample

D = torch.float64
N = 10_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def test_batch_of_normals_with_different_means_and_scales():
    loc = torch.tensor([-3.0, 0.0, 5.0], dtype=D)
    scale = torch.tensor([0.5, 1.0, 4.0], dtype=D)

    def log_density(x):
        return -0.5 * ((x - loc[:, None]) / scale[:, None]) ** 2

    init = torch.stack([loc - 2 * scale, loc + 2 * scale], 1)
    result = adaptive_rejection_sample(log_density, N, init, seed=0)
    assert result.samples.shape == (3, N) and torch.isfinite(result.samples).all()
    for b in range(3):
        ref = stats.norm(float(loc[b]), float(scale[b]))
        assert stats.kstest(result.samples[b].numpy(), ref.cdf).pvalue > 1e-3, b
    assert (result.acceptance_rate > 0.9).all(), result.acceptance_rate
    assert (result.num_points > 2).all()


def test_bounded_supports_gamma_and_beta():
    # row 0: Gamma(3, 1) on (0, inf); row 1: Beta(2, 3) on (0, 1)
    def log_density(x):
        gamma = 2 * torch.log(x[0]) - x[0]
        beta = torch.log(x[1]) + 2 * torch.log1p(-x[1])
        return torch.stack([gamma, beta])

    init = torch.tensor([[1.0, 5.0], [0.2, 0.7]], dtype=D)
    result = adaptive_rejection_sample(log_density, N, init, lower=torch.tensor([0.0, 0.0], dtype=D),
                                       upper=torch.tensor([math.inf, 1.0], dtype=D), seed=1)
    assert stats.kstest(result.samples[0].numpy(), stats.gamma(3).cdf).pvalue > 1e-3
    assert stats.kstest(result.samples[1].numpy(), stats.beta(2, 3).cdf).pvalue > 1e-3
    assert (result.samples[1] > 0).all() and (result.samples[1] < 1).all()


def test_exponential_density_with_linear_log_density():
    # h is linear: tangents coincide, the hull is exact and every candidate is accepted
    result = adaptive_rejection_sample(lambda x: -2.0 * x, N, torch.tensor([0.5, 1.0], dtype=D),
                                       lower=0.0, seed=2)
    assert stats.kstest(result.samples[0].numpy(), stats.expon(scale=0.5).cdf).pvalue > 1e-3
    assert float(result.acceptance_rate[0]) == 1.0


def test_not_log_concave_is_an_error():
    def mixture(x):  # two well-separated normals: not log-concave
        return torch.logaddexp(-0.5 * (x - 4) ** 2, -0.5 * (x + 4) ** 2)

    with pytest.raises(BayesdlError, match="not (log-)?concave"):
        adaptive_rejection_sample(mixture, 2000, torch.tensor([-6.0, 6.0], dtype=D), seed=0)


def test_tails_must_be_bounded_by_the_starts():
    def log_density(x):
        return -0.5 * x**2

    with pytest.raises(BayesdlError, match="left of the mode"):
        adaptive_rejection_sample(log_density, 10, torch.tensor([0.5, 1.0], dtype=D))
    with pytest.raises(BayesdlError, match="right of the mode"):
        adaptive_rejection_sample(log_density, 10, torch.tensor([-1.0, -0.5], dtype=D))
    with pytest.raises(BayesdlError, match="inside"):
        adaptive_rejection_sample(log_density, 10, torch.tensor([-1.0, 1.0], dtype=D), lower=0.0)
