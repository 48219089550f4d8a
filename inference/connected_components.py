"""Connected components of many graphs at once (one per chain), on CPU or GPU.

Every chain has the same ``N`` sites and candidate ``edges [E, 2]``; ``active [C, E]``
says which edges are present in chain ``c``'s graph (Swendsen-Wang's bonds). The answer
is ``root [C, N]``: for every site, the smallest site index of its component. That
representative depends on chain ``c``'s graph alone, so the random numbers a sampler
attaches to a cluster (keyed by its root) do not depend on the other chains.

- ``scipy``: all chains as one block-diagonal sparse graph handed to
  ``scipy.sparse.csgraph.connected_components`` (the library routine; CPU only).
- ``torch``: label propagation with pointer jumping in tensor ops (min-label hooking
  of both endpoints and of their parents, then shortcutting ``f = f[f]``), for CUDA
  where no library routine exists. It converges to the same smallest-index roots; the
  only host read is one "anything changed?" flag per round, O(log N) rounds in practice.
"""

from __future__ import annotations

import numpy as np
import torch

from bayesdl.errors import BayesdlError

METHODS = ("auto", "scipy", "torch")


def connected_components(active: torch.Tensor, edges: torch.Tensor, num_sites: int,
                         method: str = "auto") -> torch.Tensor:
    """``root [C, N]``: the smallest site index in each site's component, per chain.

    ``method`` is ``scipy`` (CPU), ``torch`` (any device) or ``auto`` (scipy on CPU when
    it is installed, torch otherwise).
    """
    if method not in METHODS:
        raise BayesdlError(f"unknown connected-components method {method!r}; "
                           f"choose one of {', '.join(METHODS)}")
    if method == "auto":
        method = "scipy" if active.device.type == "cpu" and _has_scipy() else "torch"
    if method == "scipy":
        return components_scipy(active, edges, num_sites)
    return components_torch(active, edges, num_sites)


def _has_scipy() -> bool:
    try:
        import scipy.sparse.csgraph  # noqa: F401
    except ImportError:  # scipy is optional: torch's routine works everywhere
        return False
    return True


def components_scipy(active: torch.Tensor, edges: torch.Tensor, num_sites: int) -> torch.Tensor:
    """Components by ``scipy.sparse.csgraph`` on the block-diagonal graph of all chains."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    chains = active.shape[0]
    total = chains * num_sites
    active_np = active.detach().cpu().numpy()
    edges_np = edges.detach().cpu().numpy()
    chain, edge = np.nonzero(active_np)
    offset = chain * num_sites
    rows = edges_np[edge, 0] + offset
    cols = edges_np[edge, 1] + offset
    graph = coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)),
                       shape=(total, total)).tocsr()
    _, labels = scipy_components(graph, directed=False)
    # the first site of each component (sites are visited in increasing order) is its min
    _, first = np.unique(labels, return_index=True)
    root = first[labels].reshape(chains, num_sites) - np.arange(chains)[:, None] * num_sites
    return torch.from_numpy(root).to(device=active.device, dtype=torch.long)


def components_torch(active: torch.Tensor, edges: torch.Tensor, num_sites: int) -> torch.Tensor:
    """Components by min-label hooking and pointer jumping in torch (CPU or CUDA)."""
    chains, num_edges = active.shape
    device = active.device
    offset = (torch.arange(chains, device=device) * num_sites)[:, None]
    u = (edges[:, 0][None, :] + offset)[active]
    v = (edges[:, 1][None, :] + offset)[active]
    parent = torch.arange(chains * num_sites, device=device)
    while True:
        previous = parent
        pu, pv = parent[u], parent[v]
        low = torch.minimum(pu, pv)
        # hook: an edge's endpoints and their parents all point at the smaller parent
        parent = parent.scatter_reduce(0, torch.cat([pu, pv, u, v]), low.repeat(4), "amin")
        parent = parent[parent]
        parent = parent[parent]
        if torch.equal(parent, previous):
            break
    return (parent.reshape(chains, num_sites) - offset).to(torch.long)
