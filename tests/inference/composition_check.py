"""A continuous kernel inside Metropolis-within-Gibbs (``gibbs+KERNEL``) against the exact
posterior of test_composition's Bernoulli mixture (enumeration of the 2^6 labelings)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from test_composition import Y_MIX, assert_within_mcse, bernoulli_mixture, exact_posterior

import bayesdl


def check_mixture_by_enumeration(method: str, warmup: int = 150, draws: int = 200) -> None:
    """E[mu], E[mu^2] and every P(z_i = 1) within 4 MCSE."""
    idata = bayesdl.infer(bernoulli_mixture, {"y": torch.tensor(Y_MIX)}, method=method,
                          chains=64, warmup=warmup, draws=draws, seed=2, progress=False)
    states = np.array(list(itertools.product([0, 1], repeat=6)))
    log_prior = (states * math.log(0.3) + (1 - states) * math.log(0.7)).sum(1)
    mean, second, p = exact_posterior(Y_MIX, 3.0 * states, log_prior)
    mu = idata.posterior["mu"].values
    assert_within_mcse(mu, mean, "E[mu]")
    assert_within_mcse(mu**2, second, "E[mu^2]")
    marginal = (p[:, None] * states).sum(0)
    for i in range(6):
        assert_within_mcse(idata.posterior["z"].values[..., i].astype(float), marginal[i],
                           f"P(z_{i} = 1)")
