"""`svi` on a posterior known in closed form: Bayesian linear regression with a known
noise scale (built-in ``linear_regression``, ``noise=0.5``), whose posterior of
(alpha, beta) is Gaussian. A full-rank Gaussian guide can represent it exactly, the
mean-field guide's optimum is known in closed form too (exact means, scales
1/sqrt(precision_ii)), and a point mass lands on the MAP, which here is the mean.

How close is close: the fit uses the default stopping rule (windowed loss, the
learning rate cut tenfold on each plateau, stop on the plateau at lr / 100), which
leaves the fitted parameters within a few hundredths of a posterior sd of the optimum
(measured over seeds 0-2: KL(q || p) 0.005-0.016 nats, mean errors <= 0.05 sd, sd
errors <= 10%). The checks bound the exact KL(q || p) (< 0.05 nats), with the
per-coordinate errors as a second view; a guide that ignored the data, the
correlation structure or the scale would fail them by orders of magnitude. The MAP
fit has exact gradients (no sampling) and is checked tightly.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

import bayesdl
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.svi import SVIOptions, draw_from_guide, fit_svi, make_guide, run_svi
from bayesdl.model_source import load_model_spec
from bayesdl.models.regression import linear_regression, linear_regression_data

NOISE = 0.5
PRIOR_SCALE = 10.0
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def conjugate_posterior() -> tuple[np.ndarray, np.ndarray]:
    data = linear_regression_data()
    design = np.column_stack([np.ones(len(data["y"])), data["X"]])
    precision = design.T @ design / NOISE**2 + np.eye(design.shape[1]) / PRIOR_SCALE**2
    cov = np.linalg.inv(precision)
    return cov @ design.T @ data["y"] / NOISE**2, cov


MEAN, COV = conjugate_posterior()
SD = np.sqrt(np.diag(COV))


def gaussian_kl(mean: np.ndarray, cov: np.ndarray) -> float:
    """KL(N(mean, cov) || exact posterior), in nats."""
    precision = np.linalg.inv(COV)
    diff = mean - MEAN
    return 0.5 * float(np.trace(precision @ cov) + diff @ precision @ diff - len(MEAN)
                       + np.linalg.slogdet(COV)[1] - np.linalg.slogdet(cov)[1])


def regression_spec() -> ModelSpec:
    return load_model_spec("linear_regression", None, {"noise": NOISE}, CPU, torch.float64)


def fit(options: SVIOptions, seed: int = 0):
    with run_context(CPU, torch.float64):
        spec = regression_spec()
        return spec, fit_svi(spec, options, seed=seed, progress=False)


def test_kl_helper_is_zero_at_the_posterior_and_grows_away_from_it():
    assert gaussian_kl(MEAN, COV) == pytest.approx(0.0, abs=1e-9)
    shifted = MEAN + np.linalg.cholesky(COV)[:, 0]  # one Mahalanobis unit away
    assert gaussian_kl(shifted, COV) == pytest.approx(0.5, rel=1e-6)
    assert gaussian_kl(MEAN, 4 * COV) == pytest.approx(4 * 0.5 * (4 - 1 - math.log(4)))


# ----------------------------------------------------------------- guide = mvn
@pytest.fixture(scope="module")
def mvn_fit():
    # the default stopping rule: what is checked is where a user's fit ends
    return fit(SVIOptions(guide="mvn"))


def test_mvn_guide_matches_the_closed_form(mvn_fit):
    spec, result = mvn_fit
    assert isinstance(result.guide, AutoMultivariateNormal)
    posterior = result.guide.get_posterior()
    mean = posterior.loc.detach().numpy()
    cov = posterior.covariance_matrix.detach().numpy()
    assert mean.shape == (4,) and cov.shape == (4, 4)
    assert result.converged
    assert gaussian_kl(mean, cov) < 0.05
    assert np.all(np.abs(mean - MEAN) < 0.15 * SD), (mean - MEAN) / SD
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), SD, rtol=0.15)
    # in absolute terms: the posterior sits at (0.98, 0.99, -2.07, 0.42) with sd 0.05
    np.testing.assert_allclose(mean, MEAN, atol=0.01)


def test_draws_from_the_guide_have_the_guide_moments(mvn_fit):
    spec, result = mvn_fit
    posterior = result.guide.get_posterior()
    mean = posterior.loc.detach().numpy()
    cov = posterior.covariance_matrix.detach().numpy()
    with run_context(CPU, torch.float64):
        draws = draw_from_guide(spec, result.guide, 4000)
    assert set(draws) == {"alpha", "beta"}
    assert draws["alpha"].shape == (4000,) and draws["beta"].shape == (4000, 3)
    flat = torch.cat([draws["alpha"][:, None], draws["beta"]], dim=1).numpy()
    # independent draws: the MCSE of a mean is sd / sqrt(n); of an sd, sd / sqrt(2n)
    n = flat.shape[0]
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * sd / math.sqrt(n))
    assert np.all(np.abs(flat.std(0) - sd) < 4 * sd / math.sqrt(2 * n))


# ----------------------------------------------------------------- guide = delta (MAP)
@pytest.fixture(scope="module")
def delta_fit():
    return fit(SVIOptions(guide="delta"))


def test_delta_guide_finds_the_map(delta_fit):
    spec, result = delta_fit
    assert isinstance(result.guide, AutoDelta)
    with run_context(CPU, torch.float64):
        point = result.guide.median(**spec.data)
    got = np.concatenate([point["alpha"].detach().numpy()[None], point["beta"].detach().numpy()])
    # Gaussian posterior: MAP = mean. The gradient is exact (a point mass draws
    # nothing), and the loss is 0.5 * z'z + const around the MAP in posterior sds z,
    # so a stop with the windowed loss settled to tol * |loss| (84 * 1e-4) leaves
    # |z| <= sqrt(2 * 0.0084) = 0.13 sd.
    assert np.all(np.abs(got - MEAN) < 0.13 * SD), (got - MEAN) / SD


def test_loss_history_stops_early_when_settled(delta_fit):
    _, result = delta_fit
    options = SVIOptions(guide="delta")
    losses = np.asarray(result.losses)
    assert result.converged
    assert len(losses) < options.max_steps
    w = options.window
    assert len(losses) % w == 0 and len(losses) >= (options.patience + 1) * w
    means = losses.reshape(-1, w).mean(axis=1)
    # it ended on a plateau: the last `patience` windows did not beat the best before them
    best_before = means[:-options.patience].min()
    assert np.all(means[-options.patience:] >= best_before - options.tol * abs(best_before))
    assert means[-1] < means[0]  # and the loss went down


def test_max_steps_ends_an_unsettled_fit():
    _, result = fit(SVIOptions(guide="delta", max_steps=150, window=50, tol=1e-12))
    assert not result.converged
    assert len(result.losses) == 150


# ----------------------------------------------------------------- default guide
def test_default_guide_is_autonormal_at_the_mean_field_optimum():
    assert isinstance(make_guide(linear_regression, None, "auto"), AutoNormal)
    assert isinstance(make_guide(linear_regression, None, "normal"), AutoNormal)
    spec, result = fit(SVIOptions())
    assert isinstance(result.guide, AutoNormal)
    loc = np.concatenate([result.guide.locs.alpha.detach().numpy()[None],
                          result.guide.locs.beta.detach().numpy()])
    scale = np.concatenate([result.guide.scales.alpha.detach().numpy()[None],
                            result.guide.scales.beta.detach().numpy()])
    # mean field's optimum for a Gaussian: the exact means, scales 1 / sqrt(Lambda_ii)
    optimum_scale = 1 / np.sqrt(np.diag(np.linalg.inv(COV)))
    assert np.all(np.abs(loc - MEAN) < 0.15 * SD), (loc - MEAN) / SD
    np.testing.assert_allclose(scale, optimum_scale, rtol=0.15)


def test_unknown_guide_and_missing_own_guide_are_errors():
    with pytest.raises(BayesdlError, match="unknown guide 'laplace'"):
        make_guide(linear_regression, None, "laplace")
    with pytest.raises(BayesdlError, match="no guide of its own"):
        make_guide(linear_regression, None, "model")


# ----------------------------------------------------------------- the model's own guide
MODEL_WITH_GUIDE = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.distributions import constraints


    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
        with pyro.plate("obs", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 2.0), obs=y)


    def guide(y):
        loc = pyro.param("q_loc", torch.zeros((), dtype=y.dtype))
        scale = pyro.param("q_scale", torch.ones((), dtype=y.dtype),
                           constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))
''')
Y4 = [1.5, 3.0, 2.2, 4.1]


def test_a_file_model_with_a_guide_uses_its_own_guide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "normal_mean.py").write_text(MODEL_WITH_GUIDE)
    (tmp_path / "y.json").write_text('{"y": [1.5, 3.0, 2.2, 4.1]}')
    idata = bayesdl.infer("normal_mean.py:model", "y.json", method="svi", chains=2, draws=2000,
                          progress=False)
    store = {k: float(v.detach()) for k, v in pyro.get_param_store().items()}
    assert set(store) == {"q_loc", "q_scale"}  # not an autoguide's parameters
    precision = len(Y4) / 2.0**2 + 1 / 10.0**2
    mean, sd = sum(Y4) / 2.0**2 / precision, 1 / math.sqrt(precision)  # 2.68, 0.995
    # 1-d, sd ~ 1, lr = 0.01: the jitter is ~0.1 sd
    assert abs(float(store["q_loc"]) - mean) < 0.3 * sd
    assert abs(float(store["q_scale"]) / sd - 1) < 0.3
    mu = idata.posterior["mu"].values
    assert mu.shape == (2, 2000)
    # the draws are the guide's: within 4 MCSE of its parameters (4,000 iid draws)
    assert abs(mu.mean() - float(store["q_loc"])) < 4 * float(store["q_scale"]) / math.sqrt(4000)
    assert idata.posterior.attrs["method"] == "svi"
    assert idata.posterior.attrs["svi_steps"] == len(idata.posterior.attrs["svi_loss"])

    # an explicit autoguide replaces the model's own
    bayesdl.infer("normal_mean.py:model", "y.json", method="svi", chains=1, draws=10,
                  progress=False, guide="normal", max_steps=50)
    assert not {"q_loc", "q_scale"} & set(pyro.get_param_store().keys())


def test_run_svi_returns_chains_by_draws():
    with run_context(CPU, torch.float64):
        spec = regression_spec()
        samples = run_svi(spec, SVIOptions(guide="delta", max_steps=300),
                          RunSettings(chains=3, draws=50, progress=False))
    assert samples.draws["alpha"].shape == (3, 50)
    assert samples.draws["beta"].shape == (3, 50, 3)
    assert samples.info["method"] == "svi"
    assert samples.info["svi_steps"] == len(samples.info["svi_loss"]) <= 300
    # a point-mass guide: every draw is the same point
    assert torch.all(samples.draws["beta"] == samples.draws["beta"][0, 0])
