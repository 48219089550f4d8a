"""The Potts distribution over label fields on a graph (Ising is q = 2).

``Potts(q, graph, beta)`` is a distribution over labels ``z`` in ``{0, ..., q-1}`` at
every site of ``graph`` whose ``log_prob`` is the *unnormalised* log weight

    log_prob(z) = sum over edges (i, j) of beta_ij * 1[z_i == z_j]

(the normaliser, the Potts partition function, is intractable and left out; it is a
constant when ``beta`` is fixed, which is all MCMC needs, so ``beta`` must not be a
latent variable). ``beta`` is one number or one per edge, ``>= 0`` (ferromagnetic:
Swendsen-Wang needs bond probabilities ``1 - exp(-beta_ij)`` in [0, 1]).

Ising with spins ``s = 2 z - 1 = +-1``, coupling ``J = 1`` and energy
``E = -sum_edges s_i s_j`` at temperature ``T`` has weight ``exp(-E / T)``; since
``s_i s_j = 2 * 1[z_i == z_j] - 1`` this is the Potts weight with ``beta = 2 / T``
(``ising_beta(T)``), and ``E = 2 * num_edges - 2 * sum_edges 1[z_i == z_j]``.

The graph is a periodic lattice (``PottsGraph.lattice(L, L)``) or any edge list
(``PottsGraph(edges, site_shape)``). It lives in this package, not in ``models/``,
because the Gibbs and Swendsen-Wang kernels read its edges and colouring.
Written by hand because neither torch nor Pyro has a Potts/Ising distribution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution, constraints

from bayesdl.errors import BayesdlError


def ising_beta(temperature: float) -> float:
    """Potts ``beta`` of the Ising model with J = 1 at ``temperature`` (``2 / T``)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise BayesdlError(f"temperature T must be a positive number, got {temperature!r}")
    return 2.0 / temperature


ISING_CRITICAL_T = 2.0 / math.log(1.0 + math.sqrt(2.0))  # Onsager: 2.269185...


class PottsGraph:
    """Sites (with a shape) and undirected edges ``[E, 2]`` of a Potts model.

    ``colours`` is a proper colouring of the sites (no edge joins two sites of one
    colour): the checkerboard on even periodic lattices, a greedy colouring otherwise.
    Gibbs sweeps update every site of one colour at once.
    """

    def __init__(self, edges: torch.Tensor | Sequence[Sequence[int]], site_shape: Sequence[int],
                 colours: torch.Tensor | None = None, _checked: bool = False):
        self.site_shape = tuple(int(n) for n in site_shape)
        self.num_sites = math.prod(self.site_shape)
        edges = torch.as_tensor(edges, dtype=torch.long)
        self.edges = edges
        self._colours = colours
        if _checked:
            return
        if edges.numel() == 0:
            edges = edges.reshape(0, 2)
            self.edges = edges
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise BayesdlError(f"Potts edges must be shaped [E, 2], got {tuple(edges.shape)}")
        if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= self.num_sites):
            raise BayesdlError(f"Potts edges name sites outside 0..{self.num_sites - 1}")
        if bool((edges[:, 0] == edges[:, 1]).any()):
            raise BayesdlError("Potts edges must join two different sites (found a self-loop)")

    @classmethod
    def lattice(cls, *shape: int, periodic: bool = True,
                device: torch.device | str | None = None) -> PottsGraph:
        """Nearest-neighbour lattice of ``shape`` (``lattice(L, L)``), periodic by default.

        Sites are numbered in row-major order; each site links to its successor along
        every axis (with wrap-around when periodic), so a periodic ``L x L`` lattice has
        ``2 L^2`` edges (``L >= 3``: for ``L = 2`` the wrap-around would double edges).
        """
        if not shape or any(isinstance(n, bool) or int(n) != n or int(n) < 1 for n in shape):
            raise BayesdlError(f"lattice sides must be positive integers, got {shape}")
        if periodic and any(int(n) == 2 for n in shape):
            raise BayesdlError("a periodic lattice needs sides of 1 or >= 3 (side 2 doubles edges)")
        device = torch.empty(0).device if device is None else torch.device(device)
        return _lattice(tuple(int(n) for n in shape), periodic, device)

    @property
    def num_edges(self) -> int:
        return self.edges.shape[0]

    @property
    def colours(self) -> torch.Tensor:
        """``[N]`` colour of each site (a proper colouring, computed once)."""
        if self._colours is None:
            self._colours = _greedy_colouring(self.edges, self.num_sites).to(self.edges.device)
        return self._colours

    @functools.cached_property
    def num_colours(self) -> int:
        return int(self.colours.max()) + 1 if self.num_sites else 0

    def to(self, device: torch.device | str) -> PottsGraph:
        colours = None if self._colours is None else self._colours.to(device)
        return PottsGraph(self.edges.to(device), self.site_shape, colours, _checked=True)


def potts_log_weight(labels: torch.Tensor, graph: PottsGraph, beta: torch.Tensor,
                     field: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised log weight of label fields ``labels [..., N]``: ``sum_edges beta_ij 1[z_i == z_j]``
    with ``beta [E]``, plus ``sum_i field[..., i, z_i]`` when an external ``field [..., N, q]`` is given."""
    edges = graph.edges
    same = (labels[..., edges[:, 0]] == labels[..., edges[:, 1]]).to(beta.dtype)
    value = (same * beta).sum(-1)
    if field is not None:
        value = value + field.gather(-1, labels[..., None]).sum((-2, -1))
    return value


@functools.lru_cache(maxsize=64)
def _lattice(shape: tuple[int, ...], periodic: bool, device: torch.device) -> PottsGraph:
    """The lattice graph, built once per (shape, periodic, device): models build it on
    every trace."""
    index = torch.arange(math.prod(shape), device=device).reshape(shape)
    edges = []
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        if periodic:
            neighbour = torch.roll(index, -1, dims=axis)
            edges.append(torch.stack([index.reshape(-1), neighbour.reshape(-1)], -1))
        else:
            low = index.narrow(axis, 0, n - 1).reshape(-1)
            high = index.narrow(axis, 1, n - 1).reshape(-1)
            edges.append(torch.stack([low, high], -1))
    edges = torch.cat(edges) if edges else torch.zeros(0, 2, dtype=torch.long, device=device)
    colours = None
    if not periodic or all(n % 2 == 0 or n == 1 for n in shape):
        grids = torch.meshgrid(*[torch.arange(n, device=device) for n in shape], indexing="ij")
        colours = (sum(grids) % 2).reshape(-1)
    return PottsGraph(edges, shape, colours, _checked=True)


def _greedy_colouring(edges: torch.Tensor, num_sites: int) -> torch.Tensor:
    """Smallest-free-colour greedy colouring (once per graph, on the host; at most
    max degree + 1 colours)."""
    neighbours: list[list[int]] = [[] for _ in range(num_sites)]
    for i, j in edges.tolist():
        neighbours[i].append(j)
        neighbours[j].append(i)
    colour = [-1] * num_sites
    for site in range(num_sites):
        used = {colour[n] for n in neighbours[site]}
        c = 0
        while c in used:
            c += 1
        colour[site] = c
    return torch.tensor(colour, dtype=torch.long)


class Potts(TorchDistribution):
    """Potts label field (see the module docstring); ``log_prob`` is unnormalised.

    Values are integer tensors shaped ``[*sample_shape, *graph.site_shape]``;
    ``log_prob`` works on any number of leading (chain, draw) dimensions.
    """

    arg_constraints = {}
    has_enumerate_support = False

    def __init__(self, q: int, graph: PottsGraph, beta: float | torch.Tensor = 1.0,
                 validate_args: bool | None = None, sample_sweeps: int = 50):
        if isinstance(q, bool) or int(q) != q or q < 2:
            raise BayesdlError(f"Potts q must be an integer >= 2, got {q!r}")
        if not isinstance(graph, PottsGraph):
            raise BayesdlError(f"Potts graph must be a PottsGraph, got {type(graph).__name__}")
        if isinstance(beta, (int, float)) and not (math.isfinite(beta) and beta >= 0):
            raise BayesdlError(f"Potts beta must be finite and >= 0 (ferromagnetic), got {beta!r}")
        beta = torch.as_tensor(beta, dtype=torch.get_default_dtype())
        if beta.ndim > 1 or (beta.ndim == 1 and beta.shape[0] != graph.num_edges):
            raise BayesdlError(f"Potts beta must be a number or one per edge ({graph.num_edges}), "
                               f"got shape {tuple(beta.shape)}")
        # tensors are checked on the host only (a check on the GPU would sync every trace)
        if (beta.device.type == "cpu"
                and not torch._C._functorch.is_batchedtensor(beta)
                and not bool(torch.isfinite(beta).all() and (beta >= 0).all())):
            raise BayesdlError("Potts beta must be finite and >= 0 (ferromagnetic couplings)")
        self.q = int(q)
        self.graph = graph if graph.edges.device == beta.device else graph.to(beta.device)
        self.beta = beta
        self.sample_sweeps = sample_sweeps
        super().__init__(torch.Size(), torch.Size(graph.site_shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.q - 1),
                                       len(self.graph.site_shape))

    @property
    def edge_beta(self) -> torch.Tensor:
        """``beta`` per edge, ``[E]``."""
        return self.beta.expand(self.graph.num_edges)

    def num_equal(self, value: torch.Tensor) -> torch.Tensor:
        """Per leading index, the number of edges whose two ends share a label."""
        flat = value.reshape(*value.shape[: value.ndim - len(self.graph.site_shape)], -1)
        edges = self.graph.edges
        return (flat[..., edges[:, 0]] == flat[..., edges[:, 1]]).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        flat = value.reshape(*value.shape[: value.ndim - len(self.graph.site_shape)], -1)
        return potts_log_weight(flat, self.graph, self.edge_beta)

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != ():
            raise BayesdlError("a Potts site cannot be expanded or put inside a plate; "
                               "its graph already covers every site")
        return self

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        """An *approximate* draw: ``sample_sweeps`` Swendsen-Wang sweeps from uniform labels
        (exact Potts sampling needs coupling from the past). Pyro calls this only to start
        a trace or for prior predictive draws; MCMC conditions the site instead."""
        from bayesdl.inference.swendsen_wang import swendsen_wang_update  # cycle: sw uses Potts

        shape = torch.Size(sample_shape)
        chains = math.prod(shape)
        n, device = self.graph.num_sites, self.beta.device
        labels = torch.randint(0, self.q, (chains, n), device=device)
        with torch.no_grad():
            for _ in range(self.sample_sweeps):
                labels, _ = swendsen_wang_update(
                    labels, self.graph.edges, self.edge_beta, self.q,
                    torch.rand(chains, self.graph.num_edges, device=device, dtype=self.beta.dtype),
                    torch.rand(chains, n, device=device, dtype=self.beta.dtype))
        return labels.reshape(*shape, *self.graph.site_shape)
