"""Gibbs updates, batched over chains: Potts heat bath by colour, and block Gibbs.

**Finite sites by enumeration.** A site with ``K`` values is redrawn from its full
conditional ``p(z_i = k | rest)``, computed for all ``k`` and all chains at once as
logits ``[C, n, K]`` and sampled by inverting the CDF at one uniform per site. Sites
that are conditionally independent (a categorical per data point) are all redrawn
together; on a Potts field neighbours are not independent, so sites are redrawn one
colour class at a time (the checkerboard on an even periodic lattice, a greedy
colouring otherwise), all sites of a colour at once: the heat-bath algorithm. The
Potts logits of site ``i`` are ``sum over edges (i, j) of beta_ij 1[z_j = k] + field[i, k]``,
gathered for every site by one ``scatter_add`` over the edges.

**Block Gibbs.** ``BlockGibbsKernel({"h": p_h_given_rest, "v": p_v_given_rest})`` sweeps
over blocks whose full conditionals the model knows in closed form. Each entry is a
callable ``conditional(values) -> torch Distribution``: ``values`` maps every block name
to its current ``[C, *shape]`` tensor and the returned distribution's shape is
``[C, *shape]`` of the block it redraws. An RBM is two blocks::

    def h_given_v(values):  # p(h | v): independent Bernoullis
        return dist.Bernoulli(logits=values["v"] @ W + c)
    def v_given_h(values):
        return dist.Bernoulli(logits=values["h"] @ W.T + b)
    kernel = BlockGibbsKernel({"h": h_given_v, "v": v_given_h}, {"h": (H,), "v": (V,)})

Draws use the chains' counter-based uniforms (not torch's global generator), so chain
``c`` is reproducible alone; supported conditionals are Bernoulli, Categorical, Normal,
MultivariateNormal, ``Independent`` wrappers of these, and any distribution with an
``icdf``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributions as tdist

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.potts import PottsGraph, potts_log_weight
from bayesdl.inference.swendsen_wang import categorical_from_uniform

COLOUR_STREAM = 51_001  # + colour
BLOCK_STREAM = 52_001  # + block index


def potts_conditional_logits(labels: torch.Tensor, edges: torch.Tensor, beta: torch.Tensor, q: int,
                             field: torch.Tensor | None = None) -> torch.Tensor:
    """``[C, N, q]`` logits of every site's Potts full conditional given its neighbours."""
    chains, num_sites = labels.shape
    dtype = beta.dtype if field is None else field.dtype
    logits = (torch.zeros(chains, num_sites * q, dtype=dtype, device=labels.device)
              if field is None else field.reshape(chains, num_sites * q).clone())
    u, v = edges[:, 0], edges[:, 1]
    beta = beta.to(dtype).expand(edges.shape[0]).expand(chains, -1)
    logits.scatter_add_(1, u * q + labels[:, v], beta)
    logits.scatter_add_(1, v * q + labels[:, u], beta)
    return logits.reshape(chains, num_sites, q)


def heat_bath_sweep(labels: torch.Tensor, graph: PottsGraph, beta: torch.Tensor, q: int,
                    uniforms: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
    """One sweep over the colour classes of ``graph``; ``uniforms [C, colours, N]``."""
    colours = graph.colours
    for colour in range(graph.num_colours):
        logits = potts_conditional_logits(labels, graph.edges, beta, q, field)
        proposal = categorical_from_uniform(logits, uniforms[:, colour])
        labels = torch.where(colours == colour, proposal, labels)
    return labels


class PottsGibbsState(NamedTuple):
    labels: torch.Tensor  # [C, N] long
    log_density: torch.Tensor  # [C]


class PottsGibbsKernel:
    """Heat-bath Gibbs sweeps (by colour) on a Potts field with an optional ``field [C, N, q]``."""

    def __init__(self, q: int, graph: PottsGraph, beta: torch.Tensor | float,
                 field: torch.Tensor | None = None):
        self.q = q
        self.graph = graph
        self.beta = torch.as_tensor(beta).expand(graph.num_edges)
        self.field = field

    def log_density(self, labels: torch.Tensor) -> torch.Tensor:
        return potts_log_weight(labels, self.graph, self.beta, self.field)

    def init(self, position: torch.Tensor, log_density: torch.Tensor | None = None,
             num_warmup: int = 0) -> PottsGibbsState:
        labels = position.round().to(torch.long)
        return PottsGibbsState(labels, self.log_density(labels))

    def update(self, rng: ChainRNG, step_index: int, labels: torch.Tensor) -> torch.Tensor:
        """One sweep of ``labels [C, N]`` (the step without state)."""
        uniforms = torch.stack([
            rng.uniform(step_index, COLOUR_STREAM + c, (self.graph.num_sites,),
                        self.beta.dtype)
            for c in range(self.graph.num_colours)], dim=1)
        return heat_bath_sweep(labels, self.graph, self.beta, self.q, uniforms, self.field)

    def step(self, rng: ChainRNG, step_index: int, state: PottsGibbsState, warmup: bool
             ) -> tuple[PottsGibbsState, None]:
        labels = self.update(rng, step_index, state.labels)
        return PottsGibbsState(labels, self.log_density(labels)), None

    def reevaluate(self, state: PottsGibbsState) -> PottsGibbsState:
        return state._replace(log_density=self.log_density(state.labels))

    def position(self, state: PottsGibbsState) -> torch.Tensor:
        return state.labels.to(self.beta.dtype)

    def stats(self, state: PottsGibbsState, info: None) -> dict[str, torch.Tensor]:
        return {"lp": state.log_density}


# ----------------------------------------------------------------- block Gibbs
Conditional = Callable[[dict[str, torch.Tensor]], tdist.Distribution]


def draw_with_uniforms(distribution: tdist.Distribution, rng: ChainRNG, step_index: int,
                       stream: int) -> torch.Tensor:
    """One draw ``[C, *shape]`` from ``distribution`` using the chains' own random numbers."""
    shape = tuple(distribution.batch_shape + distribution.event_shape)
    if not shape or shape[0] != rng.num_chains:
        raise BayesdlError(f"a block conditional must have the chain dimension first "
                           f"({rng.num_chains}), got shape {shape}")
    rest = shape[1:]
    if isinstance(distribution, tdist.Independent):
        return draw_with_uniforms(distribution.base_dist, rng, step_index, stream)
    if isinstance(distribution, tdist.Bernoulli):
        u = rng.uniform(step_index, stream, rest, distribution.probs.dtype)
        return (u < distribution.probs).to(distribution.probs.dtype)
    if isinstance(distribution, tdist.Categorical):
        u = rng.uniform(step_index, stream, rest, distribution.logits.dtype)
        return categorical_from_uniform(distribution.logits, u)
    if isinstance(distribution, tdist.Normal):
        eps = rng.normal(step_index, stream, rest, distribution.loc.dtype)
        return distribution.loc + distribution.scale * eps
    if isinstance(distribution, tdist.MultivariateNormal):
        eps = rng.normal(step_index, stream, rest, distribution.loc.dtype)
        return distribution.loc + (distribution.scale_tril @ eps[..., None])[..., 0]
    try:
        u = rng.uniform(step_index, stream, rest, torch.get_default_dtype())
        return distribution.icdf(u)
    except NotImplementedError:
        raise BayesdlError(f"block Gibbs cannot draw from {type(distribution).__name__} "
                           "with per-chain random numbers (it has no icdf)") from None


class BlockGibbsState(NamedTuple):
    values: dict[str, torch.Tensor]  # block name -> [C, *shape]
    dtype: torch.dtype  # of the flat positions


class BlockGibbsKernel:
    """Systematic-scan block Gibbs over closed-form conditionals (see the module docstring).

    Positions are the blocks flattened and joined in the order given, as floats.
    """

    def __init__(self, conditionals: Mapping[str, Conditional], shapes: Mapping[str, Sequence[int]],
                 log_density_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None):
        if set(conditionals) != set(shapes):
            raise BayesdlError("block Gibbs needs a conditional and a shape for every block")
        self.conditionals = dict(conditionals)
        self.shapes = {name: tuple(shapes[name]) for name in self.conditionals}
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes.values()]
        self.log_density_fn = log_density_fn

    def unravel(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(position, self.sizes, dim=-1)
        return {name: part.reshape(*position.shape[:-1], *self.shapes[name])
                for name, part in zip(self.shapes, parts, strict=True)}

    def init(self, position: torch.Tensor, log_density: Any = None,
             num_warmup: int = 0) -> BlockGibbsState:
        return BlockGibbsState(self.unravel(position), position.dtype)

    def step(self, rng: ChainRNG, step_index: int, state: BlockGibbsState, warmup: bool
             ) -> tuple[BlockGibbsState, None]:
        values = dict(state.values)
        for index, (name, conditional) in enumerate(self.conditionals.items()):
            draw = draw_with_uniforms(conditional(values), rng, step_index, BLOCK_STREAM + index)
            values[name] = draw.to(values[name].dtype).reshape(values[name].shape)
        return BlockGibbsState(values, state.dtype), None

    def position(self, state: BlockGibbsState) -> torch.Tensor:
        chains = next(iter(state.values.values())).shape[0]
        return torch.cat([state.values[n].reshape(chains, -1).to(state.dtype)
                          for n in self.shapes], dim=-1)

    def stats(self, state: BlockGibbsState, info: None) -> dict[str, torch.Tensor]:
        if self.log_density_fn is None:
            return {}
        return {"lp": self.log_density_fn(state.values)}
