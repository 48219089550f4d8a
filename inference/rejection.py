"""Rejection sampling with a proposal ``q`` and a bound ``M`` on ``p / q``.

Candidates ``x ~ q`` are drawn in batches and accepted with probability
``p(x) / (M q(x))``; accepted candidates are exact draws of ``p`` (which may be
unnormalised). Every candidate's ratio is checked: ``p(x) > M q(x)`` means the bound
is wrong and the output would not follow ``p``, so it is an error, not a warning.
Written by hand: neither torch nor Pyro has a general rejection sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class RejectionResult(NamedTuple):
    """``samples [num, *event]``; ``acceptance_rate`` = accepted / proposed.

    With ``p`` normalised the expected acceptance rate is ``1 / M``; in general it is
    ``Z_p / M``, so ``log_normaliser`` = ``log(M * acceptance_rate)`` estimates
    ``log Z_p`` and ``log_normaliser_se`` is its (delta-method) standard error.
    """

    samples: torch.Tensor
    acceptance_rate: float
    num_proposed: int
    log_normaliser: float
    log_normaliser_se: float


def rejection_sample(
    log_p: LogDensity,
    proposal: torch.distributions.Distribution,
    log_bound: float,
    num_samples: int,
    seed: int = 0,
    batch_size: int | None = None,
    max_proposals: int = 100_000_000,
    tolerance: float = 1e-9,
) -> RejectionResult:
    """``num_samples`` exact draws of ``p`` by rejection from ``proposal``.

    ``log_p(x)`` is the (possibly unnormalised) log density for a batch of candidates
    ``[n, *event]`` -> ``[n]``; ``log_bound`` is ``log M`` with ``p <= M q``
    everywhere. Draws use a private generator seeded ``seed`` (the global one is left
    as it was). Raises :class:`BayesdlError` when a candidate has
    ``log p - log q > log M + tolerance`` or when ``max_proposals`` is exhausted.
    """
    if num_samples < 1:
        raise BayesdlError(f"num_samples must be >= 1, got {num_samples}")
    if not math.isfinite(log_bound):
        raise BayesdlError(f"log_bound must be finite, got {log_bound}")
    batch = batch_size or max(1024, min(1_000_000, int(2 * num_samples * math.exp(min(log_bound, 20)))))
    kept: list[torch.Tensor] = []
    accepted = proposed = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while accepted < num_samples:
            if proposed >= max_proposals:
                raise BayesdlError(f"rejection sampling accepted {accepted} of {proposed} proposals "
                                   f"(max_proposals reached); is the bound M too large?")
            x = proposal.sample((batch,))
            log_ratio = log_p(x) - proposal.log_prob(x) - log_bound
            if torch.isnan(log_ratio).any():
                raise BayesdlError("log p(x) - log q(x) is NaN at a proposed point")
            worst = int(torch.argmax(log_ratio))
            if float(log_ratio[worst]) > tolerance:
                raise BayesdlError(
                    f"p(x) > M q(x) at x = {x[worst].tolist()} (log p - log q - log M = "
                    f"{float(log_ratio[worst]):.4g}); increase the bound M"
                )
            accept = torch.log(torch.rand(batch, dtype=log_ratio.dtype)) < log_ratio
            kept.append(x[accept])
            accepted += int(accept.sum())
            proposed += batch
    rate = accepted / proposed
    se = math.sqrt((1 - rate) / accepted)  # sd of the binomial rate / rate
    return RejectionResult(torch.cat(kept)[:num_samples], rate, proposed,
                           log_bound + math.log(rate), se)
