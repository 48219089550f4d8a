"""SGHMC on a correlated Gaussian: the stationary law of the chain (exact and noisy gradients)
against the closed-form stationary covariance of its linear recursion (scipy's discrete
Lyapunov solver), which is within a few percent of the target itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.sghmc import SGHMCKernel

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
PRECISION = torch.linalg.inv(COV)
ETA, ALPHA, GRAD_SD = 0.01, 0.1, 3.0


def exact_gradient(x: torch.Tensor, step: int):
    d = x - MEAN
    return -0.5 * ((d @ PRECISION) * d).sum(-1), -d @ PRECISION


def noisy_gradient(with_estimate: bool):
    def gradient(x: torch.Tensor, step: int):
        g = torch.Generator().manual_seed(10_000 + step)
        lp, grad = exact_gradient(x, step)
        grad = grad + GRAD_SD * torch.randn(x.shape, generator=g, dtype=x.dtype)
        if with_estimate:
            return lp, grad, torch.full_like(x, GRAD_SD**2)
        return lp, grad
    return gradient


def stationary_covariance(gradient_noise_var: float, beta_hat: float) -> np.ndarray:
    """Stationary covariance of theta for the linear recursion the kernel runs."""
    p = PRECISION.numpy()
    eye = np.eye(2)
    a = np.block([[eye - ETA * p, (1 - ALPHA) * eye], [-ETA * p, (1 - ALPHA) * eye]])
    s = (ETA**2 * gradient_noise_var + 2 * (ALPHA - beta_hat) * ETA) * eye
    q = np.block([[s, s], [s, s]])
    return solve_discrete_lyapunov(a, q)[:2, :2]


def run_chains(kernel: SGHMCKernel, chains: int = 500, burn: int = 300, steps: int = 1500):
    rng = ChainRNG(list(range(chains)))
    state = kernel.init(MEAN.expand(chains, 2).clone())
    for t in range(burn):
        state, _ = kernel.step(rng, t, state, True)
    first = torch.zeros(chains, 2, dtype=torch.float64)
    second = torch.zeros(chains, 2, 2, dtype=torch.float64)
    for t in range(burn, burn + steps):
        state, _ = kernel.step(rng, t, state, False)
        x = state.position
        first += x
        second += x[:, :, None] * x[:, None, :]
    first, second = first / steps, second / steps
    return first, second


def check(first, second, expected_cov):
    chains = first.shape[0]
    mean, se_mean = first.mean(0), first.std(0) / math.sqrt(chains)
    assert bool(((mean - MEAN).abs() < 5 * se_mean).all())
    moment = second.mean(0)
    se_moment = second.std(0) / math.sqrt(chains)
    expected = torch.as_tensor(expected_cov) + MEAN[:, None] * MEAN[None, :]
    assert bool(((moment - expected).abs() < 5 * se_moment).all()), (moment, expected, se_moment)


def test_lyapunov_reference_is_close_to_the_target():
    assert np.allclose(stationary_covariance(0.0, 0.0), COV.numpy(), rtol=0.03, atol=0.03)


def test_exact_gradients_give_the_stationary_law():
    first, second = run_chains(SGHMCKernel(exact_gradient, ETA, ALPHA))
    check(first, second, stationary_covariance(0.0, 0.0))


def test_noisy_gradients_with_the_noise_estimate_keep_the_law():
    """The noise estimate V_hat = GRAD_SD^2 removes the mini-batch noise from the injected noise,
    so the law is that of the exact-gradient chain; without it the spread is larger, as predicted."""
    corrected = SGHMCKernel(noisy_gradient(True), ETA, ALPHA)
    first, second = run_chains(corrected)
    check(first, second, stationary_covariance(GRAD_SD**2, 0.5 * ETA * GRAD_SD**2))
    assert np.allclose(stationary_covariance(GRAD_SD**2, 0.5 * ETA * GRAD_SD**2),
                       stationary_covariance(0.0, 0.0))
    first, second = run_chains(SGHMCKernel(noisy_gradient(False), ETA, ALPHA))
    inflated = stationary_covariance(GRAD_SD**2, 0.0)
    assert inflated[0, 0] > 1.3 * COV[0, 0].item()
    check(first, second, inflated)


def test_chain_zero_alone_equals_chain_zero_of_a_batch():
    kernel = SGHMCKernel(exact_gradient, ETA, ALPHA, resample_every=7)
    states = []
    for chains in (1, 5):
        rng = ChainRNG(list(range(chains)))
        state = kernel.init(torch.zeros(chains, 2, dtype=torch.float64))
        for t in range(20):
            state, _ = kernel.step(rng, t, state, False)
        states.append(state.position[0])
    assert torch.allclose(states[0], states[1], rtol=0, atol=1e-12)  # matmul rounding only


def test_sghmc_method_samples_a_conjugate_posterior():
    """``--method sghmc`` through bayesdl.infer on linear regression with known noise: posterior
    means within 5 MCSE + 0.1 sd (the discretisation bias) and sds within 10% of the closed form."""
    import arviz as az

    from bayesdl.models.regression import linear_regression_data

    data = linear_regression_data()
    design = np.column_stack([np.ones(len(data["y"])), data["X"]])
    cov = np.linalg.inv(design.T @ design / 0.25 + np.eye(design.shape[1]) / 100.0)
    exact_mean = cov @ design.T @ np.asarray(data["y"]) / 0.25
    exact_sd = np.sqrt(np.diag(cov))
    idata = bayesdl.infer("linear_regression", method="sghmc", chains=8, warmup=100, draws=300,
                          seed=3, progress=False, args={"noise": 0.5},
                          learning_rate=2e-4, friction=0.2, thin=3)
    post = idata.posterior
    draws = np.concatenate([post["alpha"].values[..., None], post["beta"].values], -1)
    mcse = np.array([float(az.mcse(draws[..., i])) for i in range(draws.shape[-1])])
    mean, sd = draws.reshape(-1, draws.shape[-1]).mean(0), draws.reshape(-1, draws.shape[-1]).std(0)
    assert np.all(np.abs(mean - exact_mean) < 5 * mcse + 0.1 * exact_sd), (mean, exact_mean, mcse)
    assert np.allclose(sd, exact_sd, rtol=0.1), (sd, exact_sd)
    assert {"lp", "step_size"} <= set(idata.sample_stats.data_vars)


def test_bad_options_are_errors():
    with pytest.raises(BayesdlError, match="learning_rate"):
        SGHMCKernel(exact_gradient, -1.0)
    with pytest.raises(BayesdlError, match="friction"):
        SGHMCKernel(exact_gradient, 0.1, friction=2.0)
