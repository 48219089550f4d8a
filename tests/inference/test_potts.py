"""The Potts distribution: its unnormalised log_prob, the Ising mapping, lattices,
batching and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.potts import ISING_CRITICAL_T, Potts, PottsGraph, ising_beta


def test_log_prob_counts_equal_neighbours_with_per_edge_beta():
    graph = PottsGraph.lattice(3, 4)
    beta = torch.linspace(0.1, 2.0, graph.num_edges, dtype=torch.float64)
    z = torch.randint(0, 3, (5, 3, 4), generator=torch.Generator().manual_seed(0))
    flat = z.reshape(5, -1).numpy()
    edges = graph.edges.numpy()
    expected = [(beta.numpy() * (row[edges[:, 0]] == row[edges[:, 1]])).sum() for row in flat]
    np.testing.assert_allclose(Potts(3, graph, beta).log_prob(z).numpy(), expected)  # batched [5]


def test_ising_energy_and_beta_mapping():
    """With s = 2z - 1: beta_potts * #equal = (2/T) * (sum s_i s_j + E) / 2, so Potts
    weights equal Ising weights exp(sum s_i s_j / T) up to a constant."""
    graph = PottsGraph.lattice(4, 4)
    z = torch.randint(0, 2, (50, 4, 4), generator=torch.Generator().manual_seed(1))
    T = 2.7
    s = (2 * z - 1).reshape(50, -1).double()
    e = graph.edges
    ising_log_w = (s[:, e[:, 0]] * s[:, e[:, 1]]).sum(-1) / T
    potts_log_w = Potts(2, graph, ising_beta(T)).log_prob(z)
    diff = (potts_log_w - ising_log_w).numpy()
    np.testing.assert_allclose(diff, diff[0])
    assert abs(ISING_CRITICAL_T - 2.269185) < 1e-6


def test_lattice_edges_and_colours():
    graph = PottsGraph.lattice(5, 6)
    assert graph.num_edges == 60 and graph.num_sites == 30
    pairs = {tuple(sorted(p)) for p in graph.edges.tolist()}
    assert len(pairs) == 60  # no duplicates
    colours = graph.colours
    assert bool((colours[graph.edges[:, 0]] != colours[graph.edges[:, 1]]).all())
    assert PottsGraph.lattice(3, 3, periodic=False).num_edges == 12


def test_sample_is_in_support_and_shaped():
    d = Potts(3, PottsGraph.lattice(4, 5), 0.5)
    x = d.sample((2,))
    assert x.shape == (2, 4, 5) and int(x.min()) >= 0 and int(x.max()) <= 2
    assert bool(d.support.check(x).all())


@pytest.mark.parametrize("make, message", [
    (lambda: Potts(1, PottsGraph.lattice(3, 3), 1.0), "q must be"),
    (lambda: Potts(2, PottsGraph.lattice(3, 3), -1.0), "beta must be"),
    (lambda: Potts(2, PottsGraph.lattice(3, 3), torch.ones(5)), "one per edge"),
    (lambda: PottsGraph([[0, 5]], (3,)), "outside"),
    (lambda: PottsGraph([[1, 1]], (3,)), "self-loop"),
    (lambda: PottsGraph.lattice(2, 4), "side 2"),
    (lambda: ising_beta(0.0), "temperature"),
])
def test_bad_input_is_a_bayesdl_error(make, message):
    with pytest.raises(BayesdlError, match=message):
        make()
