"""Re-run a model at posterior draws: deterministic sites, pointwise log-likelihoods
and (when asked) posterior-predictive draws, batched over draws with vmap.

The converter calls this once per run; models that cannot be vmapped are replayed
draw by draw (slower, same numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.messenger import Messenger
from torch.func import vmap
from torch.utils._pytree import tree_map

CHUNK = 4096


def _is_factor(fn: Any) -> bool:
    while fn is not None:
        if isinstance(fn, dist.Unit):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def observed_sites(model: Callable[..., Any], data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Values of the model's observed sites (not factors, not deterministic sites)."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(**data)
    return {
        name: site["value"].detach()
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not _is_factor(site["fn"])
        and not site["infer"].get("_deterministic")
    }


def deterministic_site_names(model: Callable[..., Any], data: dict[str, Any]) -> list[str]:
    """Names of the model's ``pyro.deterministic`` sites."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(**data)
    return [n for n, s in trace.nodes.items()
            if s["type"] == "sample" and s["infer"].get("_deterministic")]


def _replay_one(model, data, observed: list[str], deterministic: list[str],
                latent: dict[str, torch.Tensor]):
    trace = poutine.trace(poutine.condition(model, data=latent)).get_trace(**data)
    nodes = trace.nodes
    return (
        {name: nodes[name]["value"] for name in deterministic},
        {name: nodes[name]["fn"].log_prob(nodes[name]["value"]) for name in observed},
    )


class _ResampleObserved(Messenger):
    """Like ``poutine.uncondition`` but leaves deterministic and factor sites alone."""

    def _pyro_sample(self, msg) -> None:
        if (msg["is_observed"] and not msg["infer"].get("_deterministic")
                and not _is_factor(msg["fn"])):
            msg["is_observed"] = False
            msg["value"] = None
            msg["done"] = False


def _posterior_predictive(model, data, observed: list[str], flat: dict[str, torch.Tensor]):
    """Fresh observations at each draw (vectorised with a plate, else draw by draw)."""
    resampling = _ResampleObserved()(model)
    try:
        return Predictive(resampling, posterior_samples=flat, return_sites=observed,
                          parallel=True)(**data)
    except Exception:  # noqa: BLE001 - models that do not broadcast over a draw plate
        return Predictive(resampling, posterior_samples=flat, return_sites=observed,
                          parallel=False)(**data)


def _map_draws(function, latent_flat: dict[str, torch.Tensor]):
    """``function`` over the leading axis of ``latent_flat``, vmapped in chunks, each
    written into the output as it comes (no concatenation: one copy of the output in
    memory, which for a pointwise log-likelihood of many chains is the largest array
    of a run)."""
    total = next(iter(latent_flat.values())).shape[0]
    batched = vmap(function)
    output = None
    for start in range(0, total, CHUNK):
        chunk = {k: v[start:start + CHUNK] for k, v in latent_flat.items()}
        try:
            piece = batched(chunk)
        except Exception:  # noqa: BLE001 - a model that does not vmap: one draw at a time
            rows = [function({k: v[i] for k, v in chunk.items()})
                    for i in range(next(iter(chunk.values())).shape[0])]
            piece = tree_map(lambda *xs: torch.stack(xs), *rows)
        if start == 0 and total <= CHUNK:
            return piece
        if output is None:
            output = tree_map(lambda x: x.new_empty((total, *x.shape[1:])), piece)
        tree_map(lambda out, x, at=start: out[at:at + x.shape[0]].copy_(x), output, piece)
    return output


def replay(model: Callable[..., Any], data: dict[str, Any], draws: dict[str, torch.Tensor],
           predictive: bool = False) -> tuple[dict, dict, dict]:
    """``(deterministic, log_likelihood, posterior_predictive)`` shaped ``[C, N, ...]``."""
    chains, num = next(iter(draws.values())).shape[:2]
    flat = {k: v.reshape(chains * num, *v.shape[2:]) for k, v in draws.items()}

    def unflat(tree):
        return {k: v.reshape(chains, num, *v.shape[1:]) for k, v in tree.items()}

    with torch.no_grad(), pyro.validation_enabled(False), poutine.block():
        names = list(observed_sites(model, data))
        kept = deterministic_site_names(model, data)
        deterministic, log_likelihood = _map_draws(
            lambda latent: _replay_one(model, data, names, kept, latent), flat)
        predictions = {}
        if predictive:
            predictions = _posterior_predictive(model, data, names, flat)
    return unflat(deterministic), unflat(log_likelihood), unflat(predictions)
