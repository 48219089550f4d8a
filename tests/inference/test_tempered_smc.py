"""Tempered SMC against closed forms: for conjugate Gaussian models the evidence
estimate lies within 4 standard errors (from the spread of independent batched runs)
of the exact marginal likelihood, and posterior means and variances within 4
between-run standard errors of the exact ones; temperatures rise to 1; run c of a
batch equals the run alone; `bayesdl infer --method smc` reports it all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.tempered_smc import next_temperature, tempered_smc
from bayesdl.models.regression import linear_regression_data

D = torch.float64
SIGMA = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=D)
PRIOR_SD = 3.0
Y = torch.tensor([[1.2, -0.3], [0.4, 0.9], [2.1, 1.5], [0.8, -1.1], [1.5, 0.2], [0.9, 0.4]], dtype=D)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prior = torch.distributions.Normal(0.0, PRIOR_SD).log_prob(x).sum(-1)
    lik = torch.distributions.MultivariateNormal(x[:, None, :], SIGMA).log_prob(Y).sum(-1)
    return prior, lik


def exact_answers():
    n, d = Y.shape
    y = Y.numpy().reshape(-1)
    cov = np.kron(np.ones((n, n)), PRIOR_SD**2 * np.eye(d)) + np.kron(np.eye(n), SIGMA.numpy())
    log_z = stats.multivariate_normal(np.zeros(n * d), cov).logpdf(y)
    inv = np.linalg.inv(SIGMA.numpy())
    post_cov = np.linalg.inv(np.eye(d) / PRIOR_SD**2 + n * inv)
    post_mean = post_cov @ inv @ Y.numpy().sum(0)
    return log_z, post_mean, post_cov


def prior_draws(runs: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return PRIOR_SD * torch.randn(runs, n, 2, generator=g, dtype=D)


@pytest.fixture(scope="module")
def gaussian_runs():
    runs, n = 24, 400
    return tempered_smc(split, prior_draws(runs, n, 0), ChainRNG(list(range(runs))), target_ess=0.5,
                        num_mcmc_steps=5)


def test_log_evidence_matches_closed_form(gaussian_runs):
    log_z, _, _ = exact_answers()
    per_run = gaussian_runs.log_evidence.numpy()
    # Z_c are unbiased: compare mean(Z_c) with its delta-method standard error
    z_hat = np.exp(per_run - log_z)
    z = (z_hat.mean() - 1) / (z_hat.std(ddof=1) / math.sqrt(len(z_hat)))
    assert abs(z) < 4, (per_run, log_z)
    assert np.abs(per_run - log_z).max() < 0.5  # every run is close, not only their mean


def test_posterior_moments_match_closed_form(gaussian_runs):
    _, mean, cov = exact_answers()
    x = gaussian_runs.particles.numpy()  # [runs, n, 2]
    run_means = x.mean(1)
    se = run_means.std(0, ddof=1) / math.sqrt(x.shape[0])
    assert np.all(np.abs(run_means.mean(0) - mean) < 4 * se), (run_means.mean(0), mean, se)
    run_vars = x.var(1, ddof=1)
    se_var = run_vars.std(0, ddof=1) / math.sqrt(x.shape[0])
    assert np.all(np.abs(run_vars.mean(0) - np.diag(cov)) < 4 * se_var + 0.02 * np.diag(cov))
    run_cov = np.array([np.cov(r.T)[0, 1] for r in x])
    assert abs(run_cov.mean() - cov[0, 1]) < 4 * run_cov.std(ddof=1) / math.sqrt(len(run_cov)) + 0.02 * abs(
        cov[0, 1])


def test_temperatures_rise_to_one_and_moves_accept(gaussian_runs):
    betas = gaussian_runs.temperatures.numpy()
    assert np.all(np.diff(betas, axis=0) >= 0) and np.all(betas[-1] == 1.0)
    assert np.all(gaussian_runs.num_stages.numpy() >= 3)
    rates = gaussian_runs.acceptance_rate.numpy()
    assert np.nanmin(rates) > 0.1


def test_next_temperature_hits_the_target_ess():
    g = torch.Generator().manual_seed(1)
    log_lik = -50 * torch.rand(3, 1000, generator=g, dtype=D)
    beta = torch.tensor([0.0, 0.5, 0.999], dtype=D)
    delta = next_temperature(beta, log_lik, 0.5)
    w = delta[:, None] * log_lik
    ess = torch.exp(2 * torch.logsumexp(w, -1) - torch.logsumexp(2 * w, -1)) / 1000
    torch.testing.assert_close(ess[:2], torch.full((2,), 0.5, dtype=D), atol=1e-6, rtol=0)
    assert float(delta[2]) == pytest.approx(0.001)  # the rest fits: take it all


def test_run_c_does_not_depend_on_the_batch():
    initial = prior_draws(3, 100, 5)
    rng = ChainRNG([11, 12, 13])
    batch = tempered_smc(split, initial, rng, num_mcmc_steps=2)
    alone = tempered_smc(split, initial[2:], ChainRNG([13]), num_mcmc_steps=2)
    torch.testing.assert_close(batch.particles[2], alone.particles[0])
    torch.testing.assert_close(batch.log_evidence[2], alone.log_evidence[0])


def test_bad_arguments():
    with pytest.raises(BayesdlError, match="target_ess"):
        tempered_smc(split, prior_draws(1, 10, 0), ChainRNG([0]), target_ess=1.0)
    with pytest.raises(BayesdlError, match="keys"):
        tempered_smc(split, prior_draws(2, 10, 0), ChainRNG([0]))
    with pytest.raises(BayesdlError, match="max_stages"):
        tempered_smc(split, prior_draws(1, 50, 0), ChainRNG([0]), max_stages=1)


# ----------------------------------------------------------------- through bayesdl.infer
def linear_regression_exact(noise: float = 0.5, prior_scale: float = 10.0):
    data = linear_regression_data()
    design = np.column_stack([np.ones(len(data["y"])), data["X"]])
    cov_y = noise**2 * np.eye(len(data["y"])) + prior_scale**2 * design @ design.T
    log_z = stats.multivariate_normal(np.zeros(len(data["y"])), cov_y).logpdf(data["y"])
    precision = design.T @ design / noise**2 + np.eye(4) / prior_scale**2
    cov = np.linalg.inv(precision)
    return log_z, cov @ design.T @ data["y"] / noise**2, cov


def test_infer_smc_on_linear_regression_matches_closed_form():
    runs = 12
    idata = bayesdl.infer("linear_regression", method="smc", chains=runs, draws=300, seed=3,
                          args={"noise": 0.5}, progress=False, num_mcmc_steps=5)
    log_z, mean, cov = linear_regression_exact()
    attrs = idata.posterior.attrs
    assert attrs["method"] == "smc" and len(attrs["log_evidence_per_chain"]) == runs
    z = (attrs["log_evidence"] - log_z) / attrs["log_evidence_se"]
    assert abs(z) < 4, (attrs["log_evidence"], log_z, attrs["log_evidence_se"])
    draws = np.concatenate([idata.posterior["alpha"].values[..., None],
                            idata.posterior["beta"].values], -1)
    assert draws.shape == (runs, 300, 4)
    run_means = draws.mean(1)
    se = run_means.std(0, ddof=1) / math.sqrt(runs)
    assert np.all(np.abs(run_means.mean(0) - mean) < 4 * se + 1e-3 * np.sqrt(np.diag(cov)))
    assert "lp" in idata.sample_stats


REFERENCE = (Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "posteriordb"
             / "eight_schools-eight_schools_noncentered.json")


@pytest.mark.skipif(not REFERENCE.is_file(), reason="posteriordb reference files not found")
def test_smc_eight_schools_matches_posteriordb_reference():
    """Means within 4 standard errors (between 16 runs, plus the reference's MCSE); sds
    within 10%, as the NUTS reference check."""
    reference = json.loads(REFERENCE.read_text())["reference"]
    runs = 16
    idata = bayesdl.infer("eight_schools", method="smc", chains=runs, draws=1000, seed=11,
                          progress=False)
    post = idata.posterior
    for name, ref in reference.items():
        if name.startswith("theta["):
            x = post["theta"].values[..., int(name[6:-1]) - 1]
        else:
            x = post[name].values
        se = math.sqrt(x.mean(1).var(ddof=1) / runs + ref["mcse_mean"] ** 2)
        assert abs(x.mean() - ref["mean"]) < 4 * se, (name, x.mean(), ref["mean"], se)
        assert abs(x.std() / ref["sd"] - 1) < 0.1, (name, x.std(), ref["sd"])
