"""Step-size adaptation for HMC-type kernels: Stan's starting heuristic and dual averaging.

Both are per chain (``[C]`` tensors), so a chain adapts exactly as it would alone.
Dual averaging is Nesterov's primal-dual scheme as used by Hoffman & Gelman (2014,
Algorithm 5) with Stan's constants (gamma 0.05, t0 10, kappa 0.75, mu = log(10 eps0)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.integrator import (
    Metric,
    PhasePoint,
    PotentialFn,
    hamiltonian,
    leapfrog,
    sample_momentum,
)

HEURISTIC_STREAM = 7_000_001


class DualAveraging(NamedTuple):
    log_step: torch.Tensor  # [C] the step size used now
    log_step_avg: torch.Tensor  # [C] the averaged iterate, used after warm-up
    error_avg: torch.Tensor  # [C] running mean of (target - accept)
    mu: torch.Tensor  # [C] shrinkage point
    count: int


def dual_averaging_start(log_step: torch.Tensor) -> DualAveraging:
    zeros = torch.zeros_like(log_step)
    return DualAveraging(log_step, zeros, zeros, log_step + math.log(10.0), 0)


def dual_averaging_update(state: DualAveraging, accept_prob: torch.Tensor, target: float,
                          gamma: float = 0.05, t0: float = 10.0,
                          kappa: float = 0.75) -> DualAveraging:
    """One update towards mean acceptance ``target``."""
    t = state.count + 1
    accept_prob = torch.nan_to_num(accept_prob, nan=0.0)
    error_avg = (1 - 1 / (t + t0)) * state.error_avg + (target - accept_prob) / (t + t0)
    log_step = state.mu - math.sqrt(t) / gamma * error_avg
    weight = t ** (-kappa)
    log_step_avg = weight * log_step + (1 - weight) * state.log_step_avg
    return DualAveraging(log_step, log_step_avg, error_avg, state.mu, t)


def reasonable_step_size(rng: ChainRNG, key: int, point: PhasePoint, metric: Metric,
                         potential_fn: PotentialFn, step_size: torch.Tensor,
                         max_iterations: int = 100) -> torch.Tensor:
    """Stan's heuristic: double or halve each chain's step until one leapfrog step's
    acceptance probability crosses 0.8. Chains stop independently (masked)."""
    momentum = sample_momentum(rng, key, HEURISTIC_STREAM, metric, point.position)
    energy0 = hamiltonian(point, momentum, metric)
    log_step = step_size.log()

    def log_accept(log_step: torch.Tensor) -> torch.Tensor:
        new_point, new_momentum = leapfrog(point, momentum, log_step.exp(), metric, potential_fn)
        return torch.nan_to_num(energy0 - hamiltonian(new_point, new_momentum, metric),
                                nan=-math.inf)

    direction = torch.where(log_accept(log_step) > math.log(0.8), 1.0, -1.0).to(log_step.dtype)
    active = torch.ones_like(log_step, dtype=torch.bool)
    for _ in range(max_iterations):
        trial = log_step + direction * math.log(2.0)
        accept = log_accept(trial)
        crossed = torch.where(direction > 0, accept <= math.log(0.8), accept > math.log(0.8))
        log_step = torch.where(active, trial, log_step)  # Stan stops at the crossing step
        active = active & ~crossed & (trial.abs() < 30)
        if not bool(active.any()):
            break
    return log_step.exp()
