"""Static-trajectory Hamiltonian Monte Carlo with the chain as a tensor dimension.

Each chain integrates ``ceil(u * trajectory_length / step_size)`` leapfrog steps (or
``ceil(u * num_steps)``), ``u ~ U(0, 1]`` drawn per chain and transition (``jitter``;
without it ``u = 1``): a fixed length is periodic on near-Gaussian targets, where it
returns chains near their start and makes ESS estimates overshoot (Neal 2011, sec. 5.4,
randomises it for this reason). It then accepts the end point with probability
``min(1, exp(H0 - H))``. Chains with shorter trajectories are masked while the others
finish. Warm-up is Stan's (:mod:`~bayesdl.inference.hmc_warmup`). With a traced
potential the trajectory is one call (:func:`~bayesdl.inference.trajectory.masked_leapfrog_trajectory`:
TorchScript on CPU, a replayed CUDA graph on GPU), to the same draws.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.hmc_warmup import StanWarmup, WarmupState
from bayesdl.inference.integrator import (
    HamiltonianKernel,
    PhasePoint,
    PotentialFn,
    hamiltonian,
    leapfrog,
    sample_momentum,
    select_point,
)
from bayesdl.inference.traced_potential import TracedGradient
from bayesdl.inference.trajectory import Trajectory, masked_leapfrog_trajectory

MOMENTUM_STREAM = 21
ACCEPT_STREAM = 22
JITTER_STREAM = 23


class HMCState(NamedTuple):
    point: PhasePoint
    warmup: WarmupState


class HMCInfo(NamedTuple):
    acceptance_rate: torch.Tensor  # [C]
    n_steps: torch.Tensor  # [C]
    diverging: torch.Tensor  # [C]
    energy: torch.Tensor  # [C]
    step_size: torch.Tensor  # [C]


class HMCKernel(HamiltonianKernel):
    """Batched HMC; ``potential_fn(flat [C, D]) -> (log_density [C], grad [C, D])``.

    ``traced_gradient`` (the traced ``potential_fn`` as TorchScript) makes each
    trajectory one call, built in :meth:`init` (``cuda_graph``: as a CUDA graph on a GPU).
    """

    def __init__(self, potential_fn: PotentialFn, num_steps: int = 0,
                 trajectory_length: float = 2 * math.pi, target_accept: float = 0.8,
                 dense_mass: bool = False, max_energy_error: float = 1000.0,
                 init_step_size: float = 1.0, max_steps: int = 1024,
                 traced_gradient: TracedGradient | None = None, cuda_graph: bool = True,
                 jitter: bool = True):
        self.potential_fn = potential_fn
        self.jitter = jitter
        self.traced_gradient = traced_gradient
        self.cuda_graph = cuda_graph
        self.trajectory: Trajectory | None = None
        self.num_steps = num_steps
        self.trajectory_length = trajectory_length
        self.max_energy_error = max_energy_error
        self.max_steps = max_steps
        self.warmup = StanWarmup(target_accept, dense_mass, init_step_size=init_step_size)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> HMCState:
        log_density, grad = self.potential_fn(position)
        warmup = self.warmup.init(position, num_warmup)
        if (self.trajectory is None and self.traced_gradient is not None
                and self.traced_gradient.shape == position.shape):
            try:
                self.trajectory = masked_leapfrog_trajectory(
                    self.traced_gradient, position, warmup.metric.inverse_mass,
                    self.cuda_graph)
            except Exception as error:  # noqa: BLE001 - TorchScript declined: from Python
                warnings.warn(f"scripting the HMC trajectory failed ({type(error).__name__}); "
                              "stepping from Python", stacklevel=2)
        return HMCState(PhasePoint(position, log_density, grad), warmup)

    def step(self, rng: ChainRNG, step_index: int, state: HMCState,
             warmup: bool) -> tuple[HMCState, HMCInfo]:
        adapt = state.warmup
        if not adapt.started:
            adapt = self.warmup.begin(rng, step_index, adapt, state.point, self.potential_fn)
        point0, step_size, metric = state.point, adapt.step_size, adapt.metric
        if self.num_steps:
            steps = torch.full_like(step_size, float(self.num_steps))
        else:
            steps = self.trajectory_length / step_size
        if self.jitter:
            steps = steps * (1 - rng.uniform(step_index, JITTER_STREAM, (), step_size.dtype))
        steps = torch.ceil(steps).clamp(1, self.num_steps or self.max_steps)
        momentum = sample_momentum(rng, step_index, MOMENTUM_STREAM, metric, point0.position)
        energy0 = hamiltonian(point0, momentum, metric)
        longest = int(steps.max())  # one host read per transition
        if self._trajectory_fits(point0, metric):
            position, log_density, grad, r = self.trajectory(
                point0.position, momentum, point0.grad, point0.log_density, step_size,
                metric.inverse_mass, steps, longest)
            point = PhasePoint(position, log_density, grad)
        else:
            point, r = point0, momentum
            for n in range(longest):
                moving = steps > n
                new_point, new_r = leapfrog(point, r, step_size, metric, self.potential_fn)
                point = select_point(moving, new_point, point)
                r = torch.where(moving[:, None], new_r, r)
        energy = hamiltonian(point, r, metric)
        log_ratio = torch.nan_to_num(energy0 - energy, nan=-math.inf)
        log_u = rng.uniform(step_index, ACCEPT_STREAM, (), point0.position.dtype).log()
        accept = log_u < log_ratio
        new = select_point(accept, point, point0)
        info = HMCInfo(log_ratio.clamp(max=0).exp(), steps,
                       log_ratio < -self.max_energy_error,
                       torch.where(accept, energy, energy0), step_size)
        if warmup:
            adapt = self.warmup.update(rng, step_index, adapt, new, info.acceptance_rate,
                                       self.potential_fn)
        return HMCState(new, adapt), info

    def _trajectory_fits(self, point: PhasePoint, metric) -> bool:
        """Whether the one-call trajectory was built for these shapes."""
        if self.trajectory is None or point.position.shape != self.traced_gradient.shape:
            return False
        fits = getattr(self.trajectory, "fits", None)  # a CUDA graph has fixed buffers
        return fits is None or fits(point.position, metric.inverse_mass)
