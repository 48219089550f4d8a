"""Hamiltonian dynamics on unconstrained space, batched over chains.

The metric (inverse mass matrix) is per chain: a diagonal ``[C, D]`` or a dense
``[C, D, D]``; ``Metric`` holds it with the Cholesky factor of the mass matrix used
to draw momenta. The leapfrog takes a signed step size per chain, so NUTS can move
some chains backwards in time and others forwards in the same call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG

PotentialFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``flat [C, D] -> (log_density [C], grad [C, D])``."""


class PhasePoint(NamedTuple):
    """A position with its log density and gradient (cached so no step recomputes them)."""

    position: torch.Tensor  # [C, D]
    log_density: torch.Tensor  # [C]
    grad: torch.Tensor  # [C, D]


class Metric(NamedTuple):
    """Per-chain inverse mass matrix; ``mass_cholesky`` is None for a diagonal one."""

    inverse_mass: torch.Tensor  # [C, D] (diagonal) or [C, D, D] (dense)
    mass_cholesky: torch.Tensor | None  # [C, D, D], lower Cholesky factor of the mass matrix

    @property
    def dense(self) -> bool:
        return self.inverse_mass.dim() == 3


def diagonal_metric(inverse_mass: torch.Tensor) -> Metric:
    return Metric(inverse_mass, None)


def dense_metric(inverse_mass: torch.Tensor) -> Metric:
    """A dense metric from a covariance estimate ``[C, D, D]`` (the inverse mass)."""
    mass = torch.linalg.inv(inverse_mass)
    mass = 0.5 * (mass + mass.transpose(-1, -2))
    return Metric(inverse_mass, torch.linalg.cholesky(mass))


def unit_metric(position: torch.Tensor, dense: bool = False) -> Metric:
    if not dense:
        return diagonal_metric(torch.ones_like(position))
    chains, dim = position.shape
    eye = torch.eye(dim, dtype=position.dtype, device=position.device).expand(chains, dim, dim)
    return Metric(eye.clone(), eye.clone())


def apply_inverse_mass(inverse_mass: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    """``M^{-1} r`` per chain for a diagonal ``[C, D]`` or dense ``[C, D, D]`` inverse
    mass, on plain tensors (also inside scripted and compiled NUTS code)."""
    if inverse_mass.dim() == 3:
        return torch.matmul(inverse_mass, momentum.unsqueeze(-1)).squeeze(-1)
    return inverse_mass * momentum


def velocity(momentum: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``M^{-1} r`` per chain."""
    return apply_inverse_mass(metric.inverse_mass, momentum)


def kinetic_energy(momentum: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``r^T M^{-1} r / 2`` per chain."""
    return 0.5 * (momentum * velocity(momentum, metric)).sum(-1)


def sample_momentum(rng: ChainRNG, step: int, stream: int, metric: Metric,
                    like: torch.Tensor) -> torch.Tensor:
    """``r ~ N(0, M)`` per chain."""
    return momentum_from_noise(rng.normal(step, stream, like.shape[1:], dtype=like.dtype),
                               metric)


def momentum_from_noise(noise: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``r ~ N(0, M)`` from standard normal ``noise [C, D]``."""
    return scale_noise(noise, metric.inverse_mass, metric.mass_cholesky)


def scale_noise(noise: torch.Tensor, inverse_mass: torch.Tensor,
                mass_cholesky: torch.Tensor | None) -> torch.Tensor:
    """:func:`momentum_from_noise` on plain tensors (also inside scripted code);
    ``mass_cholesky`` is read only for a dense ``inverse_mass [C, D, D]``."""
    if inverse_mass.dim() == 3:
        assert mass_cholesky is not None
        return torch.matmul(mass_cholesky, noise.unsqueeze(-1)).squeeze(-1)
    return noise / inverse_mass.sqrt()


def leapfrog(point: PhasePoint, momentum: torch.Tensor, step_size: torch.Tensor, metric: Metric,
             potential_fn: PotentialFn) -> tuple[PhasePoint, torch.Tensor]:
    """One velocity-Verlet step of signed size ``step_size [C]``; returns (point, momentum)."""
    half = (0.5 * step_size)[:, None]
    momentum = momentum + half * point.grad
    position = point.position + step_size[:, None] * velocity(momentum, metric)
    log_density, grad = potential_fn(position)
    momentum = momentum + half * grad
    return PhasePoint(position, log_density, grad), momentum


def hamiltonian(point: PhasePoint, momentum: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``-log p + K``; NaN becomes +inf (an infinitely bad point)."""
    return energy_of(point.log_density, momentum, metric.inverse_mass)


def energy_of(log_density: torch.Tensor, momentum: torch.Tensor,
              inverse_mass: torch.Tensor) -> torch.Tensor:
    """:func:`hamiltonian` on plain tensors (also inside scripted code)."""
    kinetic = 0.5 * (momentum * apply_inverse_mass(inverse_mass, momentum)).sum(-1)
    return torch.nan_to_num(kinetic - log_density, nan=math.inf, posinf=math.inf,
                            neginf=-math.inf)


def select_point(mask: torch.Tensor, new: PhasePoint, old: PhasePoint) -> PhasePoint:
    """Per chain: ``new`` where ``mask [C]`` holds, else ``old``."""
    column = mask[:, None]
    return PhasePoint(torch.where(column, new.position, old.position),
                      torch.where(mask, new.log_density, old.log_density),
                      torch.where(column, new.grad, old.grad))


class HamiltonianKernel:
    """Protocol methods shared by kernels whose state holds ``point: PhasePoint`` and whose
    info NamedTuple is named as ArviZ's sampler statistics."""

    potential_fn: PotentialFn

    def position(self, state) -> torch.Tensor:
        return state.point.position

    def reevaluate(self, state):
        """Recompute the cached density and gradient (the target changed, e.g. in Gibbs)."""
        log_density, grad = self.potential_fn(state.point.position)
        return state._replace(point=PhasePoint(state.point.position, log_density, grad))

    def stats(self, state, info) -> dict[str, torch.Tensor]:
        return {**info._asdict(), "lp": state.point.log_density}
