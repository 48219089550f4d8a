"""Rejection sampling: draws follow the target (KS against scipy, fixed seeds, reject
below p = 1e-3), the acceptance rate is Z_p / M within binomial standard errors, the
normaliser estimate covers the truth, and a wrong bound is reported as an error."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.rejection import rejection_sample

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def beta25_log_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Beta(torch.tensor(2.0, dtype=D), torch.tensor(5.0, dtype=D)).log_prob(x)


def test_beta_from_uniform_proposal_with_tight_bound():
    mode = 1 / 5  # (a - 1) / (a + b - 2)
    log_m = float(beta25_log_pdf(torch.tensor(mode, dtype=D)))
    proposal = torch.distributions.Uniform(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    result = rejection_sample(beta25_log_pdf, proposal, log_m, 20_000, seed=0)
    assert result.samples.shape == (20_000,)
    assert stats.kstest(result.samples.numpy(), stats.beta(2, 5).cdf).pvalue > 1e-3
    expected = math.exp(-log_m)  # 1 / M for a normalised p
    se = math.sqrt(expected * (1 - expected) / result.num_proposed)
    assert abs(result.acceptance_rate - expected) < 4 * se
    assert abs(result.log_normaliser) < 4 * result.log_normaliser_se


def test_unnormalised_normal_from_cauchy_proposal_estimates_the_normaliser():
    # p(x) = exp(-x^2 / 2) (Z = sqrt(2 pi)), q = Cauchy(0, 1): sup p/q = pi * sqrt(2 pi / e)... at x^2 = 1
    def log_p(x):
        return -0.5 * x**2

    q = torch.distributions.Cauchy(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    log_m = math.log(math.pi * 2 * math.exp(-0.5))  # max of exp(-x^2/2) * pi (1 + x^2)
    result = rejection_sample(log_p, q, log_m, 20_000, seed=1)
    assert stats.kstest(result.samples.numpy(), stats.norm().cdf).pvalue > 1e-3
    z = (result.log_normaliser - 0.5 * math.log(2 * math.pi)) / result.log_normaliser_se
    assert abs(z) < 4, z


def test_bound_violation_is_detected():
    proposal = torch.distributions.Uniform(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    with pytest.raises(BayesdlError, match=r"p\(x\) > M q\(x\)"):
        rejection_sample(beta25_log_pdf, proposal, math.log(1.5), 1000, seed=0)


def test_same_seed_same_draws_and_global_generator_untouched():
    proposal = torch.distributions.Uniform(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = rejection_sample(beta25_log_pdf, proposal, math.log(2.5), 500, seed=4).samples
    after = torch.rand(1)
    b = rejection_sample(beta25_log_pdf, proposal, math.log(2.5), 500, seed=4).samples
    assert torch.equal(a, b) and torch.equal(before, after)


def test_bad_arguments():
    proposal = torch.distributions.Uniform(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    with pytest.raises(BayesdlError, match="num_samples"):
        rejection_sample(beta25_log_pdf, proposal, 1.0, 0)
    with pytest.raises(BayesdlError, match="log_bound"):
        rejection_sample(beta25_log_pdf, proposal, math.inf, 10)
    with pytest.raises(BayesdlError, match="max_proposals"):
        rejection_sample(beta25_log_pdf, proposal, 30.0, 10, max_proposals=5000)
