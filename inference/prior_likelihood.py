"""A Pyro model's log density split into prior and likelihood, and draws from its prior.

Importance sampling from the prior weights by the likelihood, and tempered SMC moves
from the prior to the posterior through ``prior * likelihood^beta``: both need the two
terms apart, on the same flat unconstrained space as :class:`BatchedPotential`
(the prior term includes the log-Jacobian of the transforms), and both start from
prior draws. Observed sites (``obs=``, ``pyro.factor``) make the likelihood; every
other sample site the prior.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch.func import vmap

from bayesdl.errors import BayesdlError
from bayesdl.inference.potential import BatchedPotential


class PriorLikelihoodPotential(BatchedPotential):
    """:class:`BatchedPotential` that also returns ``(log prior + log|J|, log likelihood)``."""

    def __init__(self, model: Callable[..., Any], data: dict[str, Any]):
        super().__init__(model, data)
        self._batched_split = vmap(self._split_one)
        probe = self.ravel({n: self.transforms[n](self.trace.nodes[n]["value"])[None]
                            for n in self.latent_sites})
        try:
            with pyro.validation_enabled(False), poutine.block():
                self._batched_split(probe)
        except Exception:  # noqa: BLE001 - any vmap limitation selects the loop
            self._batched_split = lambda flat: torch.stack([self._split_one(row) for row in flat])

    def _split_one(self, flat: torch.Tensor) -> torch.Tensor:
        constrained = {}
        log_jacobian = flat.new_zeros(())
        for name, value in self.unravel(flat).items():
            inverse = self.transforms[name].inv
            constrained[name] = inverse(value)
            log_jacobian = log_jacobian + inverse.log_abs_det_jacobian(value, constrained[name]).sum()
        trace = poutine.trace(poutine.condition(self.model, data=constrained)).get_trace(**self.data)
        trace.compute_log_prob()
        log_prior, log_lik = log_jacobian, flat.new_zeros(())
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or "log_prob_sum" not in site:
                continue
            if name in constrained:  # conditioned latent sites read as observed: go by name
                log_prior = log_prior + site["log_prob_sum"]
            else:
                log_lik = log_lik + site["log_prob_sum"]
        return torch.stack([log_prior, log_lik])

    def log_prior_and_likelihood(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log prior + log|J| [C], log likelihood [C])`` at ``[C, D]``; NaN becomes -inf."""
        with pyro.validation_enabled(False), poutine.block():
            both = self._batched_split(flat)
        both = torch.where(torch.isnan(both), -math.inf, both)
        return both[:, 0], both[:, 1]

    def prior_draws(self, num: int, seed: int) -> torch.Tensor:
        """``num`` prior draws as flat unconstrained positions ``[num, D]``.

        Pyro's ``Predictive`` draws them (vectorised when the model allows it) under a
        private generator seeded ``seed``.
        """
        shapes = self.constrained_shapes
        with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False), poutine.block():
            torch.manual_seed(seed)
            try:
                out = Predictive(self.model, num_samples=num, return_sites=self.latent_sites,
                                 parallel=True)(**self.data)
            except Exception:  # noqa: BLE001 - a model that does not vectorise draws one at a time
                warnings.warn("the model's prior cannot be drawn vectorised; drawing one at a time",
                              stacklevel=2)
                out = Predictive(self.model, num_samples=num, return_sites=self.latent_sites,
                                 parallel=False)(**self.data)
        values = {}
        for name in self.latent_sites:
            value = out[name].detach().reshape(num, *shapes[name])
            values[name] = self.transforms[name](value)
        flat = self.ravel(values)
        if not torch.isfinite(flat).all():
            raise BayesdlError("a prior draw is not finite on unconstrained space; is a prior "
                               "improper or too wide for the float type?")
        return flat
