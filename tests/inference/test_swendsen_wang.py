"""Swendsen-Wang against exact enumeration, its seeding contract, and its Pyro adapter.

Exact checks: the final states of many independent chains (one batched run) are
independent draws, compared with the enumerated distribution by a chi-square test
over every labelling (bins with expected count < 5 pooled) and over the energy.
p-values must exceed 1e-3 at a fixed seed. The L = 16 / 32 checks against Kaufman's
exact solution are in tests/models/test_ising.py.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from exact_potts import (
    all_labellings,
    chi_square_pvalue,
    log_weights,
    probabilities,
    state_codes,
)
from pyro.infer import MCMC

from bayesdl.inference.composition import SwendsenWang
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.potts import PottsGraph, ising_beta
from bayesdl.inference.settings import chain_seed
from bayesdl.inference.swendsen_wang import SwendsenWangKernel
from bayesdl.models.ising import ising

P_MIN = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def random_start(rng: ChainRNG, num_sites: int, q: int) -> torch.Tensor:
    return (rng.uniform(0, 7, (num_sites,)) * q).floor()


def final_states(kernel, chains: int, sweeps: int, seed: int = 0) -> np.ndarray:
    rng = ChainRNG([chain_seed(seed, c) for c in range(chains)])
    start = random_start(rng, kernel.graph.num_sites, kernel.q)
    draws, _, _ = run_kernel(kernel, rng, start, kernel.log_density(start.long()), sweeps - 1, 1,
                             progress=False)
    return draws[:, -1].round().long().numpy()


@pytest.mark.parametrize("components", ["scipy", "torch"])
@pytest.mark.parametrize("temperature", [2.0, 2.269, 3.0])
def test_ising_3x3_matches_exact_enumeration(components, temperature):
    graph = PottsGraph.lattice(3, 3)
    beta = ising_beta(temperature)
    kernel = SwendsenWangKernel(2, graph, torch.tensor(beta, dtype=torch.float64),
                                components=components)
    draws = final_states(kernel, chains=20_000, sweeps=20)
    states = all_labellings(9, 2)
    edges = graph.edges.numpy()
    probs = probabilities(log_weights(states, edges, beta))
    assert chi_square_pvalue(state_codes(draws, 2), probs) > P_MIN
    # the energy (number of equal edges) on its own, a sharper test of the coupling
    equal_exact = (states[:, edges[:, 0]] == states[:, edges[:, 1]]).sum(1)
    energy_probs = np.bincount(equal_exact, weights=probs, minlength=19)
    equal_drawn = (draws[:, edges[:, 0]] == draws[:, edges[:, 1]]).sum(1)
    assert chi_square_pvalue(equal_drawn, energy_probs) > P_MIN


def test_generalised_sw_on_a_random_graph_with_field_matches_exact():
    """q = 3 on an irregular graph with per-edge couplings and a per-site field (the
    generalised update): every one of the 3^8 labellings at its exact frequency."""
    gen = np.random.default_rng(5)
    num_sites, q = 8, 3
    pairs = [(i, j) for i in range(num_sites) for j in range(i + 1, num_sites)]
    edges = np.array([pairs[k] for k in gen.choice(len(pairs), 14, replace=False)])
    beta = gen.uniform(0.2, 1.5, size=len(edges))
    field = gen.normal(size=(num_sites, q))
    graph = PottsGraph(torch.tensor(edges), (num_sites,))
    chains = 20_000
    kernel = SwendsenWangKernel(q, graph, torch.tensor(beta),
                                field=torch.tensor(field).expand(chains, -1, -1))
    draws = final_states(kernel, chains=chains, sweeps=25, seed=3)
    states = all_labellings(num_sites, q)
    probs = probabilities(log_weights(states, edges, beta, field))
    assert chi_square_pvalue(state_codes(draws, q), probs) > P_MIN
    marginal_exact = np.stack([(probs[:, None] * (states == k)).sum(0) for k in range(q)], -1)
    marginal_drawn = np.stack([(draws == k).mean(0) for k in range(q)], -1)
    se = np.sqrt(marginal_exact * (1 - marginal_exact) / chains)
    assert np.all(np.abs(marginal_drawn - marginal_exact) < 4.5 * se)


def test_chain_zero_equals_a_one_chain_run():
    graph = PottsGraph.lattice(8, 8)
    kernel = SwendsenWangKernel(2, graph, torch.tensor(ising_beta(2.269), dtype=torch.float64))

    def run(chains: int) -> torch.Tensor:
        rng = ChainRNG([chain_seed(11, c) for c in range(chains)])
        start = random_start(rng, graph.num_sites, 2)
        draws, stats, _ = run_kernel(kernel, rng, start, kernel.log_density(start.long()), 10, 40,
                                     progress=False)
        return draws, stats

    batch, batch_stats = run(6)
    alone, alone_stats = run(1)
    assert torch.equal(batch[0], alone[0])
    assert torch.equal(batch_stats["num_clusters"][0], alone_stats["num_clusters"][0])
    assert (batch[0].diff(dim=0) != 0).any()  # the chain moved
    assert not torch.equal(batch[0], batch[1])


def test_sw_inside_pyro_mcmc_matches_exact_4x4_energy():
    """SwendsenWang(ising) as a pyro.infer.MCMC kernel: mean number of equal edges on a
    4x4 lattice at T_c against enumeration of all 2^16 states, within 4 MCSE."""
    import arviz as az

    pyro.set_rng_seed(2)
    mcmc = MCMC(SwendsenWang(ising), num_samples=1500, warmup_steps=50, disable_progbar=True)
    mcmc.run(L=4, T=2.269)
    z = mcmc.get_samples()["z"].long().reshape(-1, 16).numpy()
    edges = PottsGraph.lattice(4, 4).edges.numpy()
    equal = (z[:, edges[:, 0]] == z[:, edges[:, 1]]).sum(1).astype(float)
    states = all_labellings(16, 2)
    probs = probabilities(log_weights(states, edges, ising_beta(2.269)))
    exact = (probs * (states[:, edges[:, 0]] == states[:, edges[:, 1]]).sum(1)).sum()
    mcse = equal.std() / np.sqrt(float(az.ess(equal[None])))
    assert abs(equal.mean() - exact) < 4 * mcse, (equal.mean(), exact, mcse)
