"""Annealed importance sampling (Neal 2001) for log normalising constants, batched.

Particles start as exact draws from a base density with known normaliser ``Z_0`` and
move through densities ``f_k`` (``beta_0 = 0 < ... < beta_K = 1``) by kernels that
leave ``f_k`` invariant; each accumulates the log weight
``sum_k log f_{beta_k}(x_{k-1}) - log f_{beta_{k-1}}(x_{k-1})``, and
``log Z_K = log Z_0 + log mean(exp(log w))``. The particles are the chain dimension of
a :class:`~bayesdl.inference.counter_rng.ChainRNG`, so particle ``p`` sees the same
random numbers whatever the number of particles. Written by hand: neither torch nor
Pyro has AIS over user-given transition kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG

LogIntermediate = Callable[[Any, float], torch.Tensor]
Transition = Callable[[ChainRNG, int, Any, float], Any]


class AISResult(NamedTuple):
    """``log_normaliser``: the estimate of ``log Z_K``; ``standard_error``: its delta-method
    standard error ``sd(w) / (sqrt(P) mean(w))``; ``log_weights [P]``; ``particles``: the
    final states; ``effective_sample_size``: ``(sum w)^2 / sum w^2``."""

    log_normaliser: torch.Tensor
    standard_error: torch.Tensor
    log_weights: torch.Tensor
    particles: Any
    effective_sample_size: torch.Tensor


def geometric_schedule(num_steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``num_steps + 1`` inverse temperatures from 0 to 1: linear to 0.01 on the first
    tenth of the steps, then geometric (most of the change in ``f`` happens near 0 on a
    log scale, so the geometric part spaces ``log f`` differences evenly)."""
    if num_steps < 2:
        raise BayesdlError(f"AIS needs at least 2 annealing steps, got {num_steps}")
    first = max(num_steps // 10, 1)
    linear = torch.linspace(0.0, 0.01, first + 1, dtype=dtype)[:-1]
    geometric = torch.logspace(math.log10(0.01), 0.0, num_steps - first + 1, dtype=dtype)
    return torch.cat([linear, geometric])


def annealed_importance_sampling(
    log_intermediate: LogIntermediate,
    initial: Any,
    log_base_normaliser: float | torch.Tensor,
    betas: torch.Tensor,
    transition: Transition,
    rng: ChainRNG,
) -> AISResult:
    """Estimate ``log Z`` of ``f_1`` by annealing from ``f_0`` (see the module docstring).

    ``log_intermediate(x, beta)`` is ``log f_beta(x) [P]`` (unnormalised) for particles
    ``x`` (a tensor or any structure the callables share); ``initial`` are exact draws
    from ``f_0 / Z_0``; ``transition(rng, step, x, beta)`` returns ``x`` moved by a kernel
    that leaves ``f_beta`` invariant, with random numbers from ``rng`` only.
    """
    betas = torch.as_tensor(betas)
    if betas.dim() != 1 or betas.shape[0] < 2:
        raise BayesdlError("AIS needs a 1-d schedule of at least two inverse temperatures")
    if not (float(betas[0]) == 0.0 and float(betas[-1]) == 1.0 and bool((betas.diff() > 0).all())):
        raise BayesdlError("the AIS schedule must increase strictly from 0 to 1")
    schedule = betas.tolist()
    x = initial
    log_w = torch.zeros_like(log_intermediate(x, 0.0))
    for k in range(1, len(schedule)):
        log_w = log_w + log_intermediate(x, schedule[k]) - log_intermediate(x, schedule[k - 1])
        if k < len(schedule) - 1:
            x = transition(rng, k, x, schedule[k])
    if not bool(torch.isfinite(log_w).all()):
        raise BayesdlError("AIS produced non-finite log weights; check log_intermediate")
    num = log_w.shape[0]
    log_mean = torch.logsumexp(log_w, 0) - math.log(num)
    w = (log_w - log_w.max()).exp()
    se = w.std() / (math.sqrt(num) * w.mean())
    ess = w.sum() ** 2 / (w**2).sum()
    return AISResult(log_mean + log_base_normaliser, se, log_w, x, ess)
