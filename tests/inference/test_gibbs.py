"""Gibbs kernels against exact answers: heat-bath sweeps on Potts fields (lattices with
two and three colours, an irregular graph with a field), block Gibbs on a small RBM
(exact enumeration of all 2^7 states) and on a bivariate normal (closed form).

As in test_swendsen_wang.py, draws are the final states of many independent chains,
compared with the enumerated distribution by chi-square (p > 1e-3 at a fixed seed).
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from exact_potts import (
    all_labellings,
    chi_square_pvalue,
    log_weights,
    probabilities,
    state_codes,
)

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.gibbs import BlockGibbsKernel, PottsGibbsKernel, potts_conditional_logits
from bayesdl.inference.potts import PottsGraph, ising_beta
from bayesdl.inference.settings import chain_seed

P_MIN = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def run_chains(kernel, start: torch.Tensor, sweeps: int, seed: int = 0, draws: int = 1):
    rng = ChainRNG([chain_seed(seed, c) for c in range(start.shape[0])])
    return run_kernel(kernel, rng, start, torch.zeros(start.shape[0], dtype=torch.float64),
                      sweeps - draws, draws, progress=False)


def potts_start(chains: int, num_sites: int, q: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, q, (chains, num_sites), generator=torch.Generator().manual_seed(seed)
                         ).to(torch.float64)


@pytest.mark.parametrize("side", [3, 4], ids=["3x3-greedy-colours", "4x4-checkerboard"])
def test_heat_bath_ising_matches_exact_enumeration(side):
    graph = PottsGraph.lattice(side, side)
    colours = graph.colours.numpy()
    assert np.all(colours[graph.edges[:, 0]] != colours[graph.edges[:, 1]])
    assert graph.num_colours == 2 if side == 4 else graph.num_colours > 2  # odd torus: no checkerboard
    beta = ising_beta(2.269)
    kernel = PottsGibbsKernel(2, graph, torch.tensor(beta, dtype=torch.float64))
    chains = 10_000
    draws, _, _ = run_chains(kernel, potts_start(chains, side * side, 2), sweeps=40)
    drawn = draws[:, -1].long().numpy()
    states = all_labellings(side * side, 2)
    edges = graph.edges.numpy()
    probs = probabilities(log_weights(states, edges, beta))
    equal_exact = (states[:, edges[:, 0]] == states[:, edges[:, 1]]).sum(1)
    energy_probs = np.bincount(equal_exact, weights=probs, minlength=len(edges) + 1)
    equal_drawn = (drawn[:, edges[:, 0]] == drawn[:, edges[:, 1]]).sum(1)
    assert chi_square_pvalue(equal_drawn, energy_probs) > P_MIN
    if side == 3:
        assert chi_square_pvalue(state_codes(drawn, 2), probs) > P_MIN


def test_heat_bath_with_field_on_a_random_graph_matches_exact():
    gen = np.random.default_rng(8)
    num_sites, q = 8, 3
    pairs = [(i, j) for i in range(num_sites) for j in range(i + 1, num_sites)]
    edges = np.array([pairs[k] for k in gen.choice(len(pairs), 13, replace=False)])
    beta = gen.uniform(0.2, 1.5, size=len(edges))
    field = gen.normal(size=(num_sites, q))
    graph = PottsGraph(torch.tensor(edges), (num_sites,))
    colours = graph.colours.numpy()
    assert np.all(colours[edges[:, 0]] != colours[edges[:, 1]])  # a proper colouring
    chains = 10_000
    kernel = PottsGibbsKernel(q, graph, torch.tensor(beta),
                              torch.tensor(field).expand(chains, -1, -1))
    draws, _, _ = run_chains(kernel, potts_start(chains, num_sites, q), sweeps=30, seed=4)
    states = all_labellings(num_sites, q)
    probs = probabilities(log_weights(states, edges, beta, field))
    assert chi_square_pvalue(state_codes(draws[:, -1].long().numpy(), q), probs) > P_MIN


def test_conditional_logits_equal_brute_force():
    """logits[c, i, k] - logits[c, i, 0] is the change in the log weight when z_i goes
    from 0 to k, computed from the whole labelling."""
    gen = np.random.default_rng(0)
    graph = PottsGraph.lattice(3, 4)
    labels = torch.tensor(gen.integers(0, 3, size=(2, 12)))
    beta = torch.tensor(gen.uniform(0, 2, size=graph.num_edges))
    field = torch.tensor(gen.normal(size=(2, 12, 3)))
    logits = potts_conditional_logits(labels, graph.edges, beta, 3, field).numpy()
    edges = graph.edges.numpy()
    for c in range(2):
        for i in range(12):
            changed = np.repeat(labels[c].numpy()[None], 3, axis=0)
            changed[:, i] = np.arange(3)
            weights = log_weights(changed, edges, beta.numpy(), field[c].numpy())
            np.testing.assert_allclose(logits[c, i] - logits[c, i, 0], weights - weights[0],
                                       atol=1e-12)


def test_chain_zero_equals_a_one_chain_run():
    graph = PottsGraph.lattice(6, 6)
    kernel = PottsGibbsKernel(3, graph, torch.tensor(1.0, dtype=torch.float64))
    start = potts_start(5, 36, 3)
    batch, _, _ = run_chains(kernel, start, sweeps=30, draws=20, seed=9)
    alone, _, _ = run_chains(kernel, start[:1], sweeps=30, draws=20, seed=9)
    assert torch.equal(batch[0], alone[0])
    assert (batch[0].diff(dim=0) != 0).any()


# ----------------------------------------------------------------- block Gibbs
def test_block_gibbs_rbm_matches_exact_enumeration():
    """A restricted Boltzmann machine p(v, h) ~ exp(v'Wh + b'v + c'h), 4 visible and 3
    hidden binary units, sampled by alternating p(h | v) and p(v | h)."""
    gen = np.random.default_rng(2)
    W = torch.tensor(gen.normal(scale=1.0, size=(4, 3)))
    b = torch.tensor(gen.normal(size=4))
    c = torch.tensor(gen.normal(size=3))
    kernel = BlockGibbsKernel(
        {"h": lambda values: dist.Bernoulli(logits=values["v"] @ W + c),
         "v": lambda values: dist.Bernoulli(logits=values["h"] @ W.T + b)},
        {"h": (3,), "v": (4,)})
    chains = 20_000
    start = torch.zeros(chains, 7, dtype=torch.float64)
    draws, _, _ = run_chains(kernel, start, sweeps=30, seed=5)
    drawn = draws[:, -1].long().numpy()  # h then v
    states = all_labellings(7, 2)
    h, v = states[:, :3], states[:, 3:]
    log_w = np.einsum("si,ij,sj->s", v, W.numpy(), h) + v @ b.numpy() + h @ c.numpy()
    assert chi_square_pvalue(state_codes(drawn, 2), probabilities(log_w)) > P_MIN


def test_block_gibbs_bivariate_normal_moments():
    """x | y ~ N(rho y, 1 - rho^2) and y | x alike: the standard bivariate normal."""
    rho = 0.8
    sd = (1 - rho**2) ** 0.5
    kernel = BlockGibbsKernel(
        {"x": lambda values: dist.Normal(rho * values["y"][:, 0:1], sd).to_event(1),
         "y": lambda values: dist.Normal(rho * values["x"][:, 0:1], sd).to_event(1)},
        {"x": (1,), "y": (1,)})
    chains = 20_000
    draws, _, _ = run_chains(kernel, torch.full((chains, 2), 3.0, dtype=torch.float64), sweeps=40)
    x = draws[:, -1].numpy()
    n = chains
    assert np.all(np.abs(x.mean(0)) < 4 / np.sqrt(n))
    assert np.all(np.abs(x.var(0) - 1) < 4 * np.sqrt(2 / n))
    corr = np.corrcoef(x.T)[0, 1]
    assert abs(corr - rho) < 4 * (1 - rho**2) / np.sqrt(n)


def test_block_gibbs_rejects_conditionals_without_chain_dimension():
    kernel = BlockGibbsKernel({"x": lambda values: dist.Normal(torch.zeros(3), 1.0)}, {"x": (3,)})
    with pytest.raises(BayesdlError, match="chain dimension"):
        run_chains(kernel, torch.zeros(2, 3, dtype=torch.float64), sweeps=2)
