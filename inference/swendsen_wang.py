"""Swendsen-Wang cluster updates for Potts label fields, batched over chains.

One update (Swendsen & Wang 1987; Edwards & Sokal 1988):

1. every edge whose two ends share a label is bonded with probability
   ``1 - exp(-beta_ij)`` (other edges never are);
2. the bonds' connected components are the clusters
   (:mod:`bayesdl.inference.connected_components`: scipy on CPU, torch on GPU);
3. every cluster gets a new label: uniform over ``q`` labels, or, with data
   (generalised SW, the Bayesian image segmentation of Xu, Caron & Doucet 2016), in
   proportion to ``exp(sum over the cluster's sites of field[i, k])``, where
   ``field [C, N, q]`` is each site's log-likelihood of the data under label ``k``.

Clusters are keyed by their smallest site index, so the per-cluster work is a
``scatter_add`` of site fields into ``[C, N, q]`` and a gather back: no loop over
clusters or chains. Random numbers come from the chains' own keys (one uniform per
edge, one per site used only at cluster roots), so chain ``c`` does not depend on how
many chains run beside it.

``SwendsenWangKernel`` follows the BatchedKernel protocol for a label field alone
(a Potts model, with an optional fixed field); models with continuous sites compose it
with a continuous kernel (:mod:`bayesdl.inference.composition`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bayesdl.inference.connected_components import connected_components
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.potts import PottsGraph, potts_log_weight

BOND_STREAM = 50_001
LABEL_STREAM = 50_002


def categorical_from_uniform(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index drawn from ``softmax(logits [..., K])`` by inverting its CDF at ``uniform [...]``."""
    probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(-1)
    index = (cdf < uniform[..., None] * cdf[..., -1:]).sum(-1)
    return index.clamp(max=logits.shape[-1] - 1)


def swendsen_wang_update(labels: torch.Tensor, edges: torch.Tensor, beta: torch.Tensor, q: int,
                         bond_uniform: torch.Tensor, label_uniform: torch.Tensor,
                         field: torch.Tensor | None = None,
                         components: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One SW update of ``labels [C, N]``; returns ``(new labels, number of clusters [C])``.

    ``beta`` is ``[E]`` (or a number), ``bond_uniform [C, E]`` and ``label_uniform [C, N]``
    are uniforms on (0, 1); ``field [C, N, q]`` (log-likelihood per site and label)
    switches on the generalised update.
    """
    chains, num_sites = labels.shape
    bond_prob = -torch.expm1(-torch.as_tensor(beta, dtype=bond_uniform.dtype,
                                              device=labels.device))
    same = labels[:, edges[:, 0]] == labels[:, edges[:, 1]]
    active = same & (bond_uniform < bond_prob)
    root = connected_components(active, edges, num_sites, components)
    if field is None:
        cluster_label = (label_uniform * q).to(torch.long).clamp(max=q - 1)
    else:
        cluster_field = torch.zeros_like(field).scatter_add_(
            1, root[..., None].expand(chains, num_sites, q), field)
        cluster_label = categorical_from_uniform(cluster_field, label_uniform)
    new_labels = cluster_label.gather(1, root)
    sites = torch.arange(num_sites, device=labels.device)
    return new_labels, (root == sites).sum(-1)


class SWState(NamedTuple):
    labels: torch.Tensor  # [C, N] long
    log_density: torch.Tensor  # [C]: Potts log weight (+ field at the labels)


class SWInfo(NamedTuple):
    num_clusters: torch.Tensor  # [C]


class SwendsenWangKernel:
    """SW on a Potts field ``(q, graph, beta)`` with an optional fixed ``field [C, N, q]``.

    Positions are the labels as floats ``[C, N]`` (the driver's layout).
    """

    def __init__(self, q: int, graph: PottsGraph, beta: torch.Tensor | float,
                 field: torch.Tensor | None = None, components: str = "auto"):
        self.q = q
        self.graph = graph
        self.beta = torch.as_tensor(beta).expand(graph.num_edges)
        self.field = field
        self.components = components

    def log_density(self, labels: torch.Tensor) -> torch.Tensor:
        return potts_log_weight(labels, self.graph, self.beta, self.field)

    def init(self, position: torch.Tensor, log_density: torch.Tensor | None = None,
             num_warmup: int = 0) -> SWState:
        labels = position.round().to(torch.long)
        return SWState(labels, self.log_density(labels))

    def update(self, rng: ChainRNG, step_index: int, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """New labels and cluster counts for ``labels [C, N]`` (the step without state)."""
        dtype = self.beta.dtype
        return swendsen_wang_update(
            labels, self.graph.edges, self.beta, self.q,
            rng.uniform(step_index, BOND_STREAM, (self.graph.num_edges,), dtype),
            rng.uniform(step_index, LABEL_STREAM, (self.graph.num_sites,), dtype),
            self.field, self.components)

    def step(self, rng: ChainRNG, step_index: int, state: SWState, warmup: bool
             ) -> tuple[SWState, SWInfo]:
        labels, clusters = self.update(rng, step_index, state.labels)
        return SWState(labels, self.log_density(labels)), SWInfo(clusters)

    def reevaluate(self, state: SWState) -> SWState:
        return state._replace(log_density=self.log_density(state.labels))

    def position(self, state: SWState) -> torch.Tensor:
        return state.labels.to(self.beta.dtype)

    def stats(self, state: SWState, info: SWInfo) -> dict[str, torch.Tensor]:
        return {"lp": state.log_density, "num_clusters": info.num_clusters}
