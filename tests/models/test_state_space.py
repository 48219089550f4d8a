"""State-space built-ins (models/state_space.py) against statsmodels and the literature.

- ``local_level``: its log density (flat priors) equals statsmodels' exact-diffuse
  ``UnobservedComponents('llevel')`` log-likelihood at any parameters, with missing
  values (leading ones too), and its smoothed level equals statsmodels' (1e-6).
- Its MAP with flat priors is the MLE: found by L-BFGS on the model's own log density
  (fast) and by ``--method svi --opt guide=delta`` (slow), it matches statsmodels' MLE
  (variances to 1e-3 relative, log-likelihood to 1e-3 absolute) and Durbin & Koopman's
  published values (2012, section 2.10.2: sigma2_irregular = 15099, sigma2_level = 1469.1,
  given to 5 significant digits, so 1e-3 relative).
- ``LinearGaussianSSM``: log_prob equals statsmodels' likelihood; its simulations have
  the model's mean and covariance (within 5 Monte Carlo standard errors).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import statsmodels.api as sm
import torch
from pyro import poutine

import bayesdl
from bayesdl.models import REGISTRY
from bayesdl.models.state_space import (
    LinearGaussianSSM,
    linear_gaussian_ssm,
    linear_gaussian_ssm_data,
    local_level,
    local_level_distribution,
    local_level_smoother,
    nile_data,
)

DK_SIGMA2_IRREGULAR, DK_SIGMA2_LEVEL = 15099.0, 1469.1  # Durbin & Koopman (2012), 2.10.2


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread (see tests/conftest.py)."""


def nile() -> np.ndarray:
    return np.asarray(nile_data()["y"], dtype=float)


def statsmodels_local_level(y: np.ndarray):
    return sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=True)


@pytest.fixture(scope="module")
def statsmodels_mle():
    model = statsmodels_local_level(nile())
    start = model.fit(disp=False, method="nm", maxiter=2000).params
    return model.fit(start_params=start, disp=False, method="bfgs", gtol=1e-8)


def model_log_density(model, data: dict, values: dict) -> torch.Tensor:
    conditioned = poutine.condition(model, data=values)
    return poutine.trace(conditioned).get_trace(**data).log_prob_sum()


def test_builtins_are_registered():
    for name in ("local_level", "linear_gaussian_ssm"):
        assert name in REGISTRY


@pytest.mark.parametrize("missing", [[], [0, 1, 20, 21, 50, 99]])
@pytest.mark.parametrize("params", [(15099.0, 1469.1), (3000.0, 8000.0)])
def test_local_level_likelihood_and_smoother_equal_statsmodels(params, missing):
    y = nile()
    y[missing] = np.nan
    reference = statsmodels_local_level(y).smooth(list(params))
    yt = torch.as_tensor(y)
    values = {"sigma2_irregular": torch.tensor(params[0], dtype=torch.float64),
              "sigma2_level": torch.tensor(params[1], dtype=torch.float64)}
    log_density = model_log_density(local_level, {"y": yt, "flat_priors": True}, values)
    assert log_density.item() == pytest.approx(reference.llf, rel=1e-9)
    mean, var = local_level_smoother(yt, *params)
    np.testing.assert_allclose(mean.numpy(), reference.smoothed_state[0], rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), reference.smoothed_state_cov[0, 0], rtol=1e-6)


def test_local_level_map_by_lbfgs_is_the_mle_of_statsmodels_and_durbin_koopman(statsmodels_mle):
    data = {"y": torch.as_tensor(nile()), "flat_priors": True}
    log_params = torch.tensor([math.log(np.var(nile()))] * 2, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_params], max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        values = dict(zip(["sigma2_irregular", "sigma2_level"], log_params.exp(), strict=True))
        loss = -model_log_density(local_level, data, values)
        loss.backward()
        return loss

    optimiser.step(closure)
    found = log_params.exp().detach().numpy()
    np.testing.assert_allclose(found, statsmodels_mle.params, rtol=1e-3)
    np.testing.assert_allclose(found, [DK_SIGMA2_IRREGULAR, DK_SIGMA2_LEVEL], rtol=1e-3)
    assert -closure().item() == pytest.approx(statsmodels_mle.llf, abs=1e-3)


@pytest.mark.slow
def test_local_level_map_from_the_cli_method_svi_delta(statsmodels_mle):
    idata = bayesdl.infer("local_level", method="svi", args={"flat_priors": True}, chains=1,
                          draws=10, progress=False, guide="delta", lr=0.05)
    found = [float(idata.posterior[name].values[0, 0])
             for name in ("sigma2_irregular", "sigma2_level")]
    np.testing.assert_allclose(found, statsmodels_mle.params, rtol=1e-3)
    np.testing.assert_allclose(found, [DK_SIGMA2_IRREGULAR, DK_SIGMA2_LEVEL], rtol=1e-3)
    assert -idata.posterior.attrs["svi_loss"][-1] == pytest.approx(statsmodels_mle.llf, abs=1e-3)


def test_linear_gaussian_ssm_likelihood_equals_statsmodels():
    data = linear_gaussian_ssm_data(num_steps=60)
    y = data["y"].copy()
    y[[3, 17]] = np.nan
    y[30, 1] = np.nan
    q, r = np.array([0.4, 0.25]), np.array([0.3, 0.7])
    model = sm.tsa.statespace.MLEModel(y, k_states=2)
    model["design"], model["obs_cov"], model["transition"] = data["H"], np.diag(r), data["F"]
    model["selection"], model["state_cov"] = np.eye(2), np.diag(q)
    model.ssm.initialize_known(data["m0"], data["P0"])
    tensors = {k: torch.as_tensor(v) for k, v in {**data, "y": y}.items()}
    values = {"sigma2_state": torch.as_tensor(q), "sigma2_obs": torch.as_tensor(r)}
    log_density = model_log_density(linear_gaussian_ssm, {**tensors, "flat_priors": True}, values)
    assert log_density.item() == pytest.approx(model.ssm.loglike(), rel=1e-9)


def test_simulated_series_have_the_model_moments():
    """y_t = x_t + e_t for a scalar AR(1) state: E[y] and Cov[y] in closed form."""
    T, n = 4, 40000
    F, Q, R, m0, P0 = 0.8, 0.5, 0.3, 1.0, 2.0
    one = torch.ones(1, 1, dtype=torch.float64)
    ssm = LinearGaussianSSM(F * one, one, Q * one, R * one, m0 * torch.ones(1, dtype=torch.float64),
                            P0 * one, T, univariate=True)
    pyro.set_rng_seed(0)
    draws = ssm.sample((n,)).numpy()
    mean = m0 * F ** np.arange(T)
    var = np.empty(T)
    var[0] = P0
    for t in range(1, T):
        var[t] = F**2 * var[t - 1] + Q
    idx = np.arange(T)
    cov = F ** np.abs(idx[:, None] - idx[None, :]) * var[np.minimum(idx[:, None], idx[None, :])]
    cov += R * np.eye(T)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se_mean)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)  # Gaussian case
    assert np.all(np.abs(np.cov(draws.T) - cov) < 5 * se_cov)


def test_local_level_prefix_is_kept_in_simulations():
    y = torch.as_tensor(nile())
    y[0] = float("nan")
    ssm = local_level_distribution(y, torch.tensor(15099.0, dtype=torch.float64),
                                   torch.tensor(1469.1, dtype=torch.float64))
    draws = ssm.sample((3,))
    assert draws.shape == (3, 100)
    assert torch.isnan(draws[:, 0]).all() and (draws[:, 1] == y[1]).all()
    assert torch.isfinite(draws[:, 2:]).all()
