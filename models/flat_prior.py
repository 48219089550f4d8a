"""`Flat`: an improper flat prior that can still be traced, initialised and sampled from.

Pyro's ``ImproperUniform`` has log density 0 on its support but cannot be sampled, so a
model using it fails on its first trace and leaves autoguides and samplers without a
starting point. ``Flat`` keeps the log density 0 and returns ``init`` when "sampled": a
starting value only, never a draw. With flat priors the MAP is the maximum-likelihood
estimate (the parameter is not transformed when scored, so there is no Jacobian).
"""

from __future__ import annotations

import torch
from pyro.distributions import ImproperUniform, constraints


class Flat(ImproperUniform):
    """Log density 0 on ``support`` (real by default); ``sample`` returns ``init``."""

    def __init__(self, init: torch.Tensor, support: constraints.Constraint = constraints.real):
        super().__init__(support, init.shape, ())
        self.init = init

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        # a copy: torch's median of a stride-0 expanded tensor returns garbage (torch 2.13),
        # and Pyro's init_to_median takes the median of these "draws"
        return self.init.expand(torch.Size(sample_shape) + self.init.shape).clone()

    def expand(self, batch_shape, _instance=None):
        return Flat(self.init.expand(batch_shape), self.support)


__all__ = ["Flat"]
