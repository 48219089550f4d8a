"""The Ising and Potts models on a periodic L x L lattice (no data: the label field is
the posterior).

``ising``: spins ``s = 2 z - 1`` with J = 1 and energy ``E = -sum_edges s_i s_j`` at
temperature ``T`` (``--arg T=2.269``, near Onsager's critical 2.2692) or Potts
``--arg beta=...`` directly (``beta = 2 / T``; see :mod:`bayesdl.inference.potts`).
The deterministic sites ``energy`` (E per site) and ``abs_magnetisation`` (|mean s|)
are recorded with every draw. ``potts``: ``q`` labels, coupling ``beta`` (critical at
``log(1 + sqrt(q))``), with the energy ``-sum_edges 1[z_i = z_j]`` per site.

    bayesdl infer ising --method sw --arg L=32 --arg T=2.269
    bayesdl infer potts --method gibbs --arg q=3 --arg beta=1.0
"""

from __future__ import annotations

import pyro
import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.potts import Potts, PottsGraph, ising_beta
from bayesdl.models.registry import register


def no_data() -> dict:
    """These models have no data."""
    return {}


def _side(L: int) -> int:
    if isinstance(L, bool) or int(L) != L or L < 3:
        raise BayesdlError(f"lattice side L must be an integer >= 3, got {L!r}")
    return int(L)


@register("ising", "2-D Ising model on a periodic L x L lattice (--arg L=16 --arg T=2.269 or beta)",
          data=no_data, schema={}, dims={"z": ["row", "col"]})
def ising(L: int = 16, T: float = 2.269, beta: float = 0.0):
    L = _side(L)
    if not beta >= 0:
        raise BayesdlError(f"beta must be >= 0 (0 means: use T), got {beta!r}")
    coupling = beta if beta > 0 else ising_beta(T)
    field = Potts(2, PottsGraph.lattice(L, L), coupling)
    z = pyro.sample("z", field)
    num_edges = field.graph.num_edges
    equal = field.num_equal(z).to(torch.get_default_dtype())
    pyro.deterministic("energy", (2.0 * equal - num_edges) * -1.0 / (L * L))
    pyro.deterministic("abs_magnetisation", (2.0 * z.to(equal.dtype) - 1.0).mean((-2, -1)).abs())


@register("potts", "2-D q-state Potts model on a periodic L x L lattice (--arg q=3 --arg beta=1.0)",
          data=no_data, schema={}, dims={"z": ["row", "col"]})
def potts(q: int = 3, L: int = 16, beta: float = 1.0):
    L = _side(L)
    field = Potts(q, PottsGraph.lattice(L, L), beta)
    z = pyro.sample("z", field)
    pyro.deterministic("energy", -field.num_equal(z).to(torch.get_default_dtype()) / (L * L))
