"""Importance sampling against closed forms: the evidence of a conjugate normal model
(its marginal likelihood is a multivariate normal density) lies within 4 reported
standard errors of the estimate, posterior means within 4 self-normalised standard
errors; the weights reach InferenceData; runs are batched and reproducible per chain."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

import bayesdl
from bayesdl.cli import main
from bayesdl.errors import BayesdlError
from bayesdl.inference.importance import importance_sample, summarise_log_weights
from bayesdl.inference.settings import chain_seed

Y5 = np.array([0.3, -1.2, 2.1, 0.8, 1.4])
PRIOR_SD = 3.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def normal_mean_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR_SD))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact_log_evidence(y: np.ndarray = Y5, prior_sd: float = PRIOR_SD) -> float:
    cov = np.eye(len(y)) + prior_sd**2 * np.ones((len(y), len(y)))
    return float(stats.multivariate_normal(np.zeros(len(y)), cov).logpdf(y))


def exact_posterior(y: np.ndarray = Y5, prior_sd: float = PRIOR_SD) -> tuple[float, float]:
    precision = len(y) + 1 / prior_sd**2
    return y.sum() / precision, 1 / math.sqrt(precision)


def test_weight_summary_on_known_weights():
    equal = torch.full((3, 100), -2.0, dtype=torch.float64)
    s = summarise_log_weights(equal)
    torch.testing.assert_close(s.log_evidence, torch.full((3,), -2.0, dtype=torch.float64))
    torch.testing.assert_close(s.ess, torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.all(s.log_evidence_se.abs() < 1e-7)
    one = torch.tensor([0.0, -math.inf, -math.inf, -math.inf], dtype=torch.float64)
    s = summarise_log_weights(one)
    assert float(s.ess) == pytest.approx(1.0) and float(s.log_evidence) == pytest.approx(-math.log(4))
    with pytest.raises(BayesdlError, match="zero"):
        summarise_log_weights(torch.full((5,), -math.inf, dtype=torch.float64))


def test_python_api_unnormalised_gaussian_target():
    # p(x) = 7 * N(x; 1, 0.5^2), q = N(0, 2^2): Z = 7, E_p[x] = 1, E_p[x^2] = 1.25
    def log_target(x):
        return math.log(7.0) + torch.distributions.Normal(1.0, 0.5).log_prob(x)

    q = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0)
    result = importance_sample(log_target, q, 20_000, seed=0)
    z = (float(result.summary.log_evidence) - math.log(7.0)) / float(result.summary.log_evidence_se)
    assert abs(z) < 4, z
    w = result.summary.normalised_log_weights.exp()
    mean = float(result.expectation(result.draws))
    se = math.sqrt(float((w**2 * (result.draws - mean) ** 2).sum()))
    assert abs(mean - 1.0) < 4 * se
    assert 0.1 * 20_000 < float(result.summary.ess) < 20_000


@pytest.fixture(scope="module")
def prior_is():
    return bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="is", chains=4,
                         draws=5000, seed=2, progress=False)


def test_log_evidence_matches_closed_form_within_reported_se(prior_is):
    attrs = prior_is.posterior.attrs
    exact = exact_log_evidence()
    assert attrs["method"] == "is" and attrs["log_evidence_se"] > 0
    z = (attrs["log_evidence"] - exact) / attrs["log_evidence_se"]
    assert abs(z) < 4, (attrs["log_evidence"], exact, attrs["log_evidence_se"])
    per_chain = np.asarray(attrs["log_evidence_per_chain"])
    se = np.asarray(attrs["log_evidence_se_per_chain"])
    assert np.all(np.abs(per_chain - exact) < 4 * se)
    assert np.all(np.asarray(attrs["pareto_k_per_chain"]) < 0.7)


def test_weighted_draws_and_log_weights_reach_inference_data(prior_is):
    weighted = prior_is.weighted_posterior
    assert weighted["mu"].shape == (4, 5000) and weighted["log_weight"].shape == (4, 5000)
    np.testing.assert_allclose(logsumexp(weighted["log_weight"].values, axis=1), 0.0, atol=1e-10)
    # self-normalised posterior mean from the weighted draws vs the closed form
    w = np.exp(weighted["log_weight"].values)
    mu = weighted["mu"].values
    mean, sd = exact_posterior()
    estimate = (w * mu).sum() / w.sum()
    se = sd / math.sqrt(float(prior_is.posterior.attrs["ess"]))
    assert abs(estimate - mean) < 4 * se, (estimate, mean, se)
    # the resampled posterior: equally weighted draws with the same law (KS vs closed form)
    resampled = prior_is.posterior["mu"].values.ravel()
    assert stats.kstest(resampled, stats.norm(mean, sd).cdf).statistic < 4 / math.sqrt(
        float(prior_is.posterior.attrs["ess"]))


def test_without_resampling_the_weights_are_sample_stats():
    idata = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="is", chains=2,
                          draws=500, seed=3, progress=False, resample=False)
    np.testing.assert_array_equal(idata.posterior["mu"].values, idata.weighted_posterior["mu"].values)
    np.testing.assert_allclose(logsumexp(idata.sample_stats["log_weight"].values, axis=1), 0, atol=1e-10)


def test_guide_proposal_is_far_more_efficient_and_still_exact():
    idata = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="is", chains=2,
                          draws=2000, seed=4, progress=False, proposal="guide", proposal_scale=1.5,
                          svi_steps=1500, lr=0.05)
    attrs = idata.posterior.attrs
    assert attrs["ess"] > 0.5 * 4000  # a fitted proposal: most draws count
    z = (attrs["log_evidence"] - exact_log_evidence()) / attrs["log_evidence_se"]
    assert abs(z) < 4, z


def test_chain_c_is_a_one_chain_run_with_its_seed():
    kwargs = dict(method="is", draws=300, progress=False, resample=False)
    batch = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, chains=3, seed=5, **kwargs)
    alone = bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, chains=1,
                          seed=chain_seed(5, 2), **kwargs)
    np.testing.assert_allclose(batch.posterior["mu"].values[2], alone.posterior["mu"].values[0])
    np.testing.assert_allclose(batch.posterior.attrs["log_evidence_per_chain"][2],
                               alone.posterior.attrs["log_evidence"])


def test_bad_options_exit_with_code_2(capsys):
    with pytest.raises(BayesdlError, match="unknown proposal"):
        bayesdl.infer(normal_mean_model, {"y": torch.tensor(Y5)}, method="is", progress=False,
                      proposal="magic")
    code = main(["infer", "eight_schools", "--method", "is", "--opt", "proposal_scale=-1",
                 "--no-progress", "--out", "/tmp/should-not-exist-is-run"])
    assert code == 2 and "proposal_scale" in capsys.readouterr().err
