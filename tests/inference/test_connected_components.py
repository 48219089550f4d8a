"""The torch connected-components routine (for CUDA) against scipy.sparse.csgraph, and
scipy against a brute-force relaxation on tiny graphs: the same smallest-index root for
every site of every chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesdl.errors import BayesdlError
from bayesdl.inference.connected_components import (
    components_scipy,
    components_torch,
    connected_components,
)
from bayesdl.inference.potts import PottsGraph


def random_problem(seed: int, chains: int, num_sites: int, num_edges: int, density: float):
    gen = np.random.default_rng(seed)
    edges = gen.integers(0, num_sites, size=(num_edges, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    active = gen.random((chains, edges.shape[0])) < density
    return torch.tensor(active), torch.tensor(edges)


def brute_force_roots(active: np.ndarray, edges: np.ndarray, num_sites: int) -> np.ndarray:
    """Smallest reachable index by repeated relaxation (quadratic, for tiny graphs)."""
    out = []
    for row in active:
        root = np.arange(num_sites)
        changed = True
        while changed:
            changed = False
            for (u, v), on in zip(edges, row, strict=True):
                if on and root[u] != root[v]:
                    root[u] = root[v] = min(root[u], root[v])
                    changed = True
        out.append(root)
    return np.stack(out)


@given(seed=st.integers(0, 2**31), chains=st.integers(1, 5), num_sites=st.integers(1, 40),
       density=st.floats(0.0, 1.0))
@settings(max_examples=60, deadline=None)
def test_torch_equals_scipy_on_random_graphs(seed, chains, num_sites, density):
    active, edges = random_problem(seed, chains, num_sites, 2 * num_sites, density)
    scipy_roots = components_scipy(active, edges, num_sites)
    torch_roots = components_torch(active, edges, num_sites)
    assert torch.equal(scipy_roots, torch_roots)
    if num_sites <= 12:
        brute = brute_force_roots(active.numpy(), edges.numpy(), num_sites)
        assert np.array_equal(scipy_roots.numpy(), brute)


@pytest.mark.parametrize("density", [0.3, 0.6, 0.9])
def test_torch_equals_scipy_on_percolating_lattices(density):
    """Bond percolation on a 64 x 64 torus (long clusters: many pointer-jumping rounds)."""
    graph = PottsGraph.lattice(64, 64)
    gen = np.random.default_rng(int(density * 10))
    active = torch.tensor(gen.random((3, graph.num_edges)) < density)
    assert torch.equal(components_scipy(active, graph.edges, graph.num_sites),
                       components_torch(active, graph.edges, graph.num_sites))


def test_roots_are_per_chain_and_smallest_index():
    edges = torch.tensor([[0, 1], [1, 2], [3, 4]])
    active = torch.tensor([[True, True, False], [False, False, True]])
    expected = torch.tensor([[0, 0, 0, 3, 4], [0, 1, 2, 3, 3]])
    for method in ("scipy", "torch", "auto"):
        assert torch.equal(connected_components(active, edges, 5, method), expected)


def test_unknown_method_is_an_error():
    with pytest.raises(BayesdlError, match="connected-components method"):
        connected_components(torch.zeros(1, 0, dtype=torch.bool), torch.zeros(0, 2, dtype=torch.long),
                             3, "bfs")
