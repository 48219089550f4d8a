"""RBM: exact quantities against brute force and autograd, Gibbs/CD against exact expectations,
AIS against exact log Z, and the trainer against scikit-learn's BernoulliRBM."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.models.rbm import (
    RBM,
    RBMTraining,
    ais_log_likelihood,
    ais_log_partition,
    base_rate_bias,
    binary_states,
    energy,
    exact_gradient,
    exact_log_likelihood,
    exact_log_partition,
    gibbs_sweeps,
    model_statistics,
    rbm_model,
    train_rbm,
)


def random_rbm(num_visible: int, num_hidden: int, scale: float = 0.5, seed: int = 0) -> RBM:
    g = torch.Generator().manual_seed(seed)
    return RBM(scale * torch.randn(num_visible, num_hidden, generator=g, dtype=torch.float64),
               scale * torch.randn(num_visible, generator=g, dtype=torch.float64),
               scale * torch.randn(num_hidden, generator=g, dtype=torch.float64))


def brute_force_log_z(rbm: RBM) -> torch.Tensor:
    v = binary_states(rbm.num_visible)
    h = binary_states(rbm.num_hidden)
    e = energy(rbm, v[:, None, :], h[None, :, :])
    return torch.logsumexp(-e.reshape(-1), 0)


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)])
def test_exact_log_partition_matches_brute_force_over_both_layers(shape):
    rbm = random_rbm(*shape)
    assert torch.allclose(exact_log_partition(rbm), brute_force_log_z(rbm), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)])
def test_exact_gradient_is_autograd_of_exact_log_likelihood(shape):
    rbm = random_rbm(*shape, seed=1)
    v = (torch.rand(30, shape[0], generator=torch.Generator().manual_seed(2)) < 0.4).double()
    params = [p.clone().requires_grad_() for p in rbm]
    grads = torch.autograd.grad(exact_log_likelihood(RBM(*params), v), params)
    for ours, autograd in zip(exact_gradient(rbm, v), grads, strict=True):
        assert torch.allclose(ours, autograd, atol=1e-10)


def test_block_gibbs_chains_reach_exact_model_statistics():
    """Many independent chains of the block-Gibbs kernel: time-averaged v h' per chain, then
    the mean over chains within 5 standard errors of the enumerated expectation."""
    rbm = random_rbm(8, 5, scale=0.6, seed=3)
    chains = 1000
    rng = ChainRNG(list(range(chains)))
    v = torch.zeros(chains, 8, dtype=torch.float64)
    h = torch.zeros(chains, 5, dtype=torch.float64)
    v, h = gibbs_sweeps(rbm, rng, 0, v, h, 30)
    total = torch.zeros(chains, 8, 5, dtype=torch.float64)
    sweeps = 40
    for s in range(sweeps):
        v, h = gibbs_sweeps(rbm, rng, 30 + s, v, h, 1)
        total += v[:, :, None] * torch.sigmoid(v @ rbm.weight + rbm.hidden_bias)[:, None, :]
    per_chain = total / sweeps
    estimate, se = per_chain.mean(0), per_chain.std(0) / math.sqrt(chains)
    exact = model_statistics(rbm).weight
    assert bool(((estimate - exact).abs() < 5 * se + 1e-12).all())


def test_cd_and_pcd_raise_exact_likelihood_and_pcd_matches_sklearn():
    """On a 12-pixel toy set, CD-1 and PCD-1 training raise the exact log-likelihood, and PCD-1
    reaches scikit-learn's BernoulliRBM (PCD-1, same settings): means over 3 seeds each within
    4 combined standard errors (from the seeds' spread)."""
    sklearn_rbm = pytest.importorskip("sklearn.neural_network").BernoulliRBM
    g = torch.Generator().manual_seed(4)
    prototypes = (torch.rand(3, 12, generator=g) < 0.5).double()
    labels = torch.randint(0, 3, (300,), generator=g)
    flips = (torch.rand(300, 12, generator=g) < 0.1).double()
    data = (prototypes[labels] + flips) % 2
    start = exact_log_likelihood(random_rbm(12, 6, scale=0.01), data)
    settings = dict(num_hidden=6, learning_rate=0.05, batch_size=10, epochs=20)
    cd1 = exact_log_likelihood(train_rbm(data, RBMTraining(method="cd", **settings)).rbm, data)
    ours, theirs = [], []
    for seed in range(3):
        ours.append(exact_log_likelihood(
            train_rbm(data, RBMTraining(method="pcd", seed=seed, **settings)).rbm, data))
        peer = sklearn_rbm(n_components=6, learning_rate=0.05, batch_size=10, n_iter=20,
                           random_state=seed).fit(data.numpy())
        theirs.append(exact_log_likelihood(
            RBM(torch.as_tensor(peer.components_.T), torch.as_tensor(peer.intercept_visible_),
                torch.as_tensor(peer.intercept_hidden_)), data))
    ours_t, theirs_t = torch.stack(ours), torch.stack(theirs)
    se = math.sqrt(float(ours_t.var() / 3 + theirs_t.var() / 3))
    assert float(cd1) > float(start) + 1.0 and float(ours_t.min()) > float(start) + 1.0
    assert abs(float(ours_t.mean() - theirs_t.mean())) < 4 * se


def test_ais_log_partition_matches_exact_within_its_standard_error():
    rbm = random_rbm(20, 10, scale=0.4, seed=5)
    exact = exact_log_partition(rbm)
    result = ais_log_partition(rbm, num_particles=200, num_steps=300, seed=0)
    assert abs(float(result.log_normaliser - exact)) < 5 * float(result.standard_error) + 1e-3
    assert float(result.standard_error) < 0.05


def test_ais_with_a_base_rate_start_gives_the_exact_test_log_likelihood():
    rbm = random_rbm(16, 16, scale=0.3, seed=6)
    g = torch.Generator().manual_seed(7)
    data = (torch.rand(50, 16, generator=g) < torch.sigmoid(rbm.visible_bias)).double()
    result = ais_log_partition(rbm, 100, 200, base_visible_bias=base_rate_bias(data), seed=1)
    estimate = ais_log_likelihood(rbm, data, result.log_normaliser)
    assert abs(float(estimate - exact_log_likelihood(rbm, data))) < 5 * float(result.standard_error)


def test_builtin_rbm_factor_is_the_exact_log_likelihood():
    rbm = random_rbm(10, 3, seed=8)
    v = (torch.rand(20, 10, generator=torch.Generator().manual_seed(9)) < 0.5).double()
    conditioned = poutine.condition(rbm_model, {"weight": rbm.weight, "visible_bias": rbm.visible_bias,
                                                "hidden_bias": rbm.hidden_bias})
    trace = poutine.trace(conditioned).get_trace(v, num_hidden=3)
    factor = trace.nodes["v_log_likelihood"]["fn"].log_prob(trace.nodes["v_log_likelihood"]["value"])
    assert torch.allclose(factor, 20 * exact_log_likelihood(rbm, v), atol=1e-9)
    pyro.clear_param_store()


def test_bad_input_is_a_bayesdl_error():
    with pytest.raises(BayesdlError, match="0/1"):
        train_rbm(torch.full((4, 3), 0.5, dtype=torch.float64))
    with pytest.raises(BayesdlError, match="cd or pcd"):
        train_rbm(torch.zeros(4, 3, dtype=torch.float64), RBMTraining(method="sgd"))
    with pytest.raises(BayesdlError, match="AIS"):
        exact_log_partition(random_rbm(30, 30))
