"""GP regression (models/gp.py, models/cholesky.py) against scikit-learn and simulation.

- With the same fixed kernel, the log marginal likelihood, the predictive mean and the
  predictive covariance (noiseless: ``alpha=noise``; noisy: ``+ WhiteKernel(noise)``)
  equal scikit-learn's ``GaussianProcessRegressor`` to 1e-6 relative (float64).
- Type-II ML finds scikit-learn's optimum (and no worse a likelihood).
- The closed-form gradient of the marginal likelihood equals finite differences and
  torch's autograd through ``torch.linalg.cholesky``.
- The NNGP kernel equals the output covariance of random networks of width 2048 with
  Gaussian weights (ReLU, erf, and tanh by quadrature; depth 1-3), within 5 Monte Carlo
  standard errors (about 0.2-0.6% of each entry; the finite-width bias is O(1/width),
  about 0.05%). Quadrature reproduces the erf closed form (1e-6 at 64 nodes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyro import poutine
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

from bayesdl.errors import BayesdlError
from bayesdl.models import REGISTRY
from bayesdl.models.cholesky import jittered_cholesky
from bayesdl.models.gp import (
    QUADRATURE_ACTIVATIONS,
    _erf_expectation,
    _quadrature_expectation,
    fit_type2_ml,
    gp_log_marginal_likelihood,
    gp_regression,
    gp_regression_data,
    log_marginal_likelihood,
    nngp_kernel,
    noisy_kernel_matrix,
    predict,
)

PARAMS = {"lengthscale": 0.8, "variance": 1.3, "noise": 0.05}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread (see tests/conftest.py)."""


def sklearn_kernel(name: str, lengthscale: float, variance: float, bounds="fixed"):
    base = {"rbf": RBF(lengthscale, bounds),
            "matern32": Matern(lengthscale, bounds, nu=1.5),
            "matern52": Matern(lengthscale, bounds, nu=2.5)}[name]
    return ConstantKernel(variance, bounds) * base


def regression_problem(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    y = np.sin(X[:, 0]) + 0.5 * np.cos(2 * X[:, 1]) + 0.1 * rng.normal(size=n)
    return X, y, rng.uniform(-4, 4, size=(9, 2))


def t(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["rbf", "matern32", "matern52"])
def test_likelihood_and_predictions_equal_scikit_learn(kernel):
    X, y, X_new = regression_problem()
    base = sklearn_kernel(kernel, PARAMS["lengthscale"], PARAMS["variance"])
    noisy = GaussianProcessRegressor(base + WhiteKernel(PARAMS["noise"], "fixed"), optimizer=None).fit(X, y)
    noiseless = GaussianProcessRegressor(base, alpha=PARAMS["noise"], optimizer=None).fit(X, y)
    params = {k: t(v) for k, v in PARAMS.items()}
    ours = gp_log_marginal_likelihood(kernel, t(X), t(y), params)
    assert ours.item() == pytest.approx(noisy.log_marginal_likelihood_value_, rel=1e-6)
    for reference, is_noiseless in [(noisy, False), (noiseless, True)]:
        mean, cov = reference.predict(X_new, return_cov=True)
        _, sd = reference.predict(X_new, return_std=True)
        full = predict(kernel, t(X), t(y), t(X_new), params, noiseless=is_noiseless)
        diagonal = predict(kernel, t(X), t(y), t(X_new), params, noiseless=is_noiseless, full_cov=False)
        np.testing.assert_allclose(full.mean.numpy(), mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(full.cov.numpy(), cov, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(diagonal.cov.numpy(), sd**2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_type2_ml_finds_the_scikit_learn_optimum(kernel):
    X, y, _ = regression_problem()
    reference = GaussianProcessRegressor(
        sklearn_kernel(kernel, 1.0, 1.0, (1e-3, 1e3)) + WhiteKernel(0.1, (1e-6, 1e1))).fit(X, y)
    fit = fit_type2_ml(kernel, t(X), t(y))
    theta = reference.kernel_.get_params()
    expected = [theta["k1__k2__length_scale"], theta["k1__k1__constant_value"], theta["k2__noise_level"]]
    found = [fit.params["lengthscale"], fit.params["variance"], fit.params["noise"]]
    np.testing.assert_allclose(found, expected, rtol=1e-3)
    assert fit.log_marginal_likelihood >= reference.log_marginal_likelihood_value_ - 1e-6


def test_closed_form_gradient_equals_finite_differences_and_autograd():
    X, y, _ = regression_problem(n=15)

    def from_log_params(log_ls, log_var, log_noise):
        params = {"lengthscale": log_ls.exp(), "variance": log_var.exp(), "noise": log_noise.exp()}
        return noisy_kernel_matrix("matern52", t(X), params)

    inputs = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.1, -0.2, -2.0))
    assert torch.autograd.gradcheck(lambda *a: log_marginal_likelihood(from_log_params(*a), t(y)), inputs)
    ours = torch.autograd.grad(log_marginal_likelihood(from_log_params(*inputs), t(y)), inputs)
    K = from_log_params(*inputs)
    autograd = torch.distributions.MultivariateNormal(torch.zeros(15, dtype=torch.float64),
                                                      scale_tril=torch.linalg.cholesky(K)).log_prob(t(y))
    for a, b in zip(ours, torch.autograd.grad(autograd, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def random_network_covariance(x: torch.Tensor, depth: int, sigma_w: float, sigma_b: float, phi,
                              width: int = 2048, networks: int = 1024, seed: int = 0):
    """Output covariance of ``networks`` random networks: mean and its standard error.

    The first layer multiplies explicit Gaussian weights. For a deeper layer, the units'
    pre-activations given the previous layer's activations a [width, P] are independent
    N(0, sigma_b^2 + sigma_w^2 a'a / width) vectors over the P inputs (a row of W @ a
    with W ~ N(0, 1)): drawn so, without the width x width matrix. The output layer's
    covariance given a is that matrix itself (its expectation over the output weights).
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    P, d = x.shape
    h = sigma_w * normal(networks, width, d) @ x.T / math.sqrt(d) + sigma_b * normal(networks, width, 1)
    for _ in range(depth - 1):
        a = phi(h)
        cov = sigma_b**2 + sigma_w**2 * a.transpose(-1, -2) @ a / width
        h = normal(networks, width, P) @ torch.linalg.cholesky(cov).transpose(-1, -2)
    a = phi(h)
    per_network = sigma_b**2 + sigma_w**2 * a.transpose(-1, -2) @ a / width
    return per_network.mean(0), per_network.std(0) / math.sqrt(networks)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation,phi", [("relu", torch.relu), ("erf", torch.erf), ("tanh", torch.tanh)])
def test_nngp_kernel_equals_wide_random_networks(activation, phi, depth):
    x = t(np.random.default_rng(1).normal(size=(4, 3)))
    mean, standard_error = random_network_covariance(x, depth, 1.5, 0.3, phi, seed=depth)
    kernel = nngp_kernel(x, x, depth, 1.5, 0.3, activation)
    assert torch.all((mean - kernel).abs() < 5 * standard_error)
    assert torch.all(standard_error < 0.01 * kernel.abs())  # the check has power


def test_quadrature_reproduces_the_erf_closed_form():
    """64 nodes per dimension (the default): 1e-6 up to variance 4; 150 nodes: 1e-12."""
    k11, k22 = t([1.3, 0.7, 4.0]), t([0.9, 2.0, 0.1])
    k12 = t([0.5, -1.1, 0.3])
    exact = _erf_expectation(k11, k22, k12)
    torch.testing.assert_close(_quadrature_expectation(torch.erf, k11, k22, k12, 64), exact,
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(_quadrature_expectation(torch.erf, k11, k22, k12, 150), exact,
                               rtol=1e-12, atol=0)


def test_nngp_gradients_are_finite_on_the_training_diagonal():
    X = t(gp_regression_data(num_points=12)["X"])
    y = t(gp_regression_data(num_points=12)["y"])
    for kernel in ("nngp_relu", "nngp_erf", "nngp_tanh"):
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for k, v in {"sigma_w": 1.4, "sigma_b": 0.2, "noise": 0.1}.items()}
        gp_log_marginal_likelihood(kernel, X, y, params, depth=3).backward()
        assert all(torch.isfinite(p.grad) for p in params.values())
    assert "tanh" in QUADRATURE_ACTIVATIONS


def test_model_log_density_is_the_marginal_likelihood_plus_priors():
    data = {k: t(v) for k, v in gp_regression_data(num_points=20).items()}
    values = {"sigma_w": t(1.2), "sigma_b": t(0.4), "noise": t(0.05)}
    trace = poutine.trace(poutine.condition(gp_regression, data=values)).get_trace(
        **data, kernel="nngp_erf", depth=2)
    expected = gp_log_marginal_likelihood("nngp_erf", data["X"], data["y"], values, depth=2)
    assert trace.nodes["y"]["fn"].log_prob(data["y"]).item() == pytest.approx(expected.item(), rel=1e-10)
    assert "gp_regression" in REGISTRY


def test_jitter_rescues_a_singular_kernel_and_fails_clearly_otherwise():
    X = t(np.zeros((5, 1)))  # five identical inputs: a rank-one kernel matrix
    K = noisy_kernel_matrix("rbf", X, {"lengthscale": 1.0, "variance": 1.0, "noise": 0.0})
    L = jittered_cholesky(K)
    torch.testing.assert_close(L @ L.T, K, atol=1e-8, rtol=0)
    with pytest.raises(BayesdlError, match="not positive definite"):
        jittered_cholesky(-K)
    with pytest.raises(BayesdlError, match="unknown kernel"):
        gp_log_marginal_likelihood("cubic", X, t(np.zeros(5)), {})
    with pytest.raises(BayesdlError, match="to match X"):
        gp_log_marginal_likelihood("rbf", X, t(np.zeros(4)), {"lengthscale": 1.0, "variance": 1.0,
                                                              "noise": 0.1})


def test_bad_model_arguments_are_one_line_errors():
    from bayesdl.model_source import load_model_spec

    cpu = torch.device("cpu")
    with pytest.raises(BayesdlError, match="unknown kernel 'cubic'"):
        load_model_spec("gp_regression", None, {"kernel": "cubic"}, cpu, torch.float64)
    with pytest.raises(BayesdlError, match="unknown gp_regression dataset"):
        load_model_spec("gp_regression", None, {"dataset": "mars"}, cpu, torch.float64)
    spec = load_model_spec("gp_regression", None, {"dataset": "co2", "kernel": "nngp_relu"}, cpu,
                           torch.float64)
    assert spec.data["X"].shape == (521, 1) and abs(spec.data["y"].mean().item()) < 1e-12
