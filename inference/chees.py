"""ChEES-HMC (Hoffman, Radul & Sountsov 2021): HMC for many chains with a trajectory
length learned across chains.

All chains share one step size and one trajectory length T, so every chain takes the
same number of leapfrog steps and nothing is masked: the whole run is a fixed sequence
of tensor operations, which suits a GPU with hundreds or thousands of chains. In
warm-up:

- the number of steps is ``ceil(u T / eps)`` with ``u`` from a Halton sequence (the
  jitter that keeps a fixed T from resonating with the target);
- ``log T`` follows Adam (with fast moment estimates) up the gradient of the ChEES criterion
  ``E[(|x' - E x'|^2 - |x - E x|^2)^2] / 4``, estimated from all chains and weighted by
  their acceptance probabilities (the paper's estimator);
- the step size follows dual averaging on the harmonic mean of the chains'
  acceptance probabilities (one stuck chain pulls it down, as it should);
- the diagonal metric is the across-chain variance, re-estimated in Stan's windows.

Because adaptation pools the chains, a chain's draws depend on the others (unlike our
NUTS); the seeding contract is per run: the same seed and chain count give the same draws.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.integrator import (
    HamiltonianKernel,
    Metric,
    PhasePoint,
    PotentialFn,
    diagonal_metric,
    hamiltonian,
    leapfrog,
    sample_momentum,
    select_point,
    velocity,
)
from bayesdl.inference.step_size import reasonable_step_size
from bayesdl.inference.traced_potential import TracedGradient
from bayesdl.inference.trajectory import Trajectory, leapfrog_trajectory
from bayesdl.inference.warmup_schedule import slow_windows

BETA1, BETA2 = 0.0, 0.5  # Adam's moment decay rates for log T
MOMENTUM_STREAM = 31
ACCEPT_STREAM = 32


def halton(index: int, base: int = 2) -> float:
    """The ``index``-th element (1-based) of the van der Corput sequence in ``base``."""
    result, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


class ChEESState(NamedTuple):
    point: PhasePoint
    metric: Metric
    log_step: float  # shared by all chains
    log_step_avg: float
    error_avg: float
    mu: float
    log_length: float  # log trajectory length
    adam_m: float
    adam_v: float
    length_avg: float  # Polyak average of T over the second half of warm-up
    count: int
    window_sum: torch.Tensor  # [D] across-chain position moments in the current window
    window_sq: torch.Tensor
    window_count: int
    windows: tuple[tuple[int, int], ...]
    num_warmup: int
    started: bool


class ChEESInfo(NamedTuple):
    acceptance_rate: torch.Tensor
    n_steps: torch.Tensor
    diverging: torch.Tensor
    energy: torch.Tensor
    step_size: torch.Tensor
    trajectory_length: torch.Tensor


class ChEESKernel(HamiltonianKernel):
    """Batched ChEES-HMC; ``potential_fn(flat [C, D]) -> (log_density [C], grad [C, D])``.

    ``traced_gradient`` (the traced ``potential_fn`` as TorchScript) makes each
    transition's trajectory one call (:mod:`~bayesdl.inference.trajectory`: TorchScript
    on CPU, a CUDA graph on GPU unless ``cuda_graph`` is false), built in :meth:`init`,
    to the same draws.
    """

    def __init__(self, potential_fn: PotentialFn, target_accept: float = 0.651,
                 init_step_size: float = 0.1, init_trajectory_length: float = 1.0,
                 learning_rate: float = 0.025, max_steps: int = 1000,
                 max_energy_error: float = 1000.0,
                 traced_gradient: TracedGradient | None = None, cuda_graph: bool = True):
        self.potential_fn = potential_fn
        self.traced_gradient = traced_gradient
        self.cuda_graph = cuda_graph
        self.trajectory: Trajectory | None = None
        self.target_accept = target_accept
        self.init_step_size = init_step_size
        self.init_trajectory_length = init_trajectory_length
        self.learning_rate = learning_rate
        self.max_steps = max_steps
        self.max_energy_error = max_energy_error

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> ChEESState:
        log_density, grad = self.potential_fn(position)
        if (self.trajectory is None and self.traced_gradient is not None
                and self.traced_gradient.shape == position.shape):
            try:
                self.trajectory = leapfrog_trajectory(self.traced_gradient.module, position,
                                                      torch.ones_like(position), self.cuda_graph)
            except Exception as error:  # noqa: BLE001 - TorchScript declined: from Python
                warnings.warn(f"scripting the leapfrog trajectory failed ({type(error).__name__}); "
                              "stepping from Python", stacklevel=2)
        log_step = math.log(self.init_step_size)
        return ChEESState(
            point=PhasePoint(position, log_density, grad),
            metric=diagonal_metric(torch.ones_like(position)),
            log_step=log_step, log_step_avg=0.0, error_avg=0.0, mu=log_step + math.log(10),
            log_length=math.log(self.init_trajectory_length), adam_m=0.0, adam_v=0.0,
            length_avg=0.0, count=0,
            window_sum=torch.zeros_like(position[0]), window_sq=torch.zeros_like(position[0]),
            window_count=0, windows=tuple(slow_windows(num_warmup)), num_warmup=num_warmup,
            started=False,
        )

    def step(self, rng: ChainRNG, step_index: int, state: ChEESState,
             warmup: bool) -> tuple[ChEESState, ChEESInfo]:
        if not state.started:
            state = self._start_step_size(rng, step_index, state)
        step_size = math.exp(state.log_step)
        jitter = halton(step_index + 1)
        steps = min(max(1, math.ceil(jitter * math.exp(state.log_length) / step_size)),
                    self.max_steps)
        point0, metric = state.point, state.metric
        momentum = sample_momentum(rng, step_index, MOMENTUM_STREAM, metric, point0.position)
        energy0 = hamiltonian(point0, momentum, metric)
        eps = torch.full_like(energy0, step_size)
        if self.trajectory is not None and point0.position.shape == self.traced_gradient.shape:
            position, log_density, grad, r = self.trajectory(
                point0.position, momentum, point0.grad, eps, metric.inverse_mass, steps)
            point = PhasePoint(position, log_density, grad)
        else:
            point, r = point0, momentum
            for _ in range(steps):
                point, r = leapfrog(point, r, eps, metric, self.potential_fn)
        energy = hamiltonian(point, r, metric)
        log_ratio = torch.nan_to_num(energy0 - energy, nan=-math.inf)
        accept_prob = log_ratio.clamp(max=0).exp()
        log_u = rng.uniform(step_index, ACCEPT_STREAM, (), energy0.dtype).log()
        accept = log_u < log_ratio
        new = select_point(accept, point, point0)
        if warmup:
            state = self._adapt(rng, step_index, state, point0, point, r, accept_prob, jitter,
                                new)
        state = state._replace(point=new)
        info = ChEESInfo(accept_prob, torch.full_like(accept_prob, float(steps)),
                         log_ratio < -self.max_energy_error,
                         torch.where(accept, energy, energy0),
                         torch.full_like(accept_prob, step_size),
                         torch.full_like(accept_prob, math.exp(state.log_length)))
        return state, info

    def _start_step_size(self, rng: ChainRNG, step_index: int, state: ChEESState) -> ChEESState:
        per_chain = reasonable_step_size(
            rng, step_index, state.point, state.metric, self.potential_fn,
            torch.full_like(state.point.log_density, math.exp(state.log_step)))
        log_step = float(per_chain.log().median())
        return state._replace(log_step=log_step, mu=log_step + math.log(10), started=True)

    def _adapt(self, rng: ChainRNG, step_index: int, state: ChEESState, start: PhasePoint,
               end: PhasePoint, end_momentum: torch.Tensor, accept_prob: torch.Tensor,
               jitter: float, new: PhasePoint) -> ChEESState:
        # step size: dual averaging on the harmonic mean acceptance across chains
        t = state.count + 1
        harmonic = float(1.0 / (1.0 / accept_prob.clamp(min=1e-10)).mean())
        error_avg = (1 - 1 / (t + 10)) * state.error_avg + (self.target_accept - harmonic) / (t + 10)
        log_step = state.mu - math.sqrt(t) / 0.05 * error_avg
        weight = t ** -0.75
        log_step_avg = weight * log_step + (1 - weight) * state.log_step_avg
        # trajectory length: Adam on the ChEES gradient (acceptance-weighted across chains)
        finite = torch.isfinite(end.position).all(-1) & (accept_prob > 0)
        centre_end = torch.where(finite[:, None], end.position, 0).sum(0) / finite.sum().clamp(min=1)
        centre_start = start.position.mean(0)
        spread_end = ((end.position - centre_end) ** 2).sum(-1)
        spread_start = ((start.position - centre_start) ** 2).sum(-1)
        chees = ((spread_end - spread_start)
                 * ((end.position - centre_end) * velocity(end_momentum, state.metric)).sum(-1))
        weights = torch.where(finite, accept_prob, 0)
        gradient = float((weights * torch.nan_to_num(chees)).sum() / weights.sum().clamp(min=1e-10))
        gradient *= jitter * math.exp(state.log_length)  # d/dlog T of the jittered end point
        # Adam with fast moment estimates (beta1 = 0, beta2 = 0.5, as TFP's ChEES): the
        # gradient's scale changes by orders of magnitude between the first transient and
        # the stationary phase, and a slow second moment (0.999) kept the early huge
        # gradients for hundreds of steps, freezing T
        adam_m = BETA1 * state.adam_m + (1 - BETA1) * gradient
        adam_v = BETA2 * state.adam_v + (1 - BETA2) * gradient**2
        m_hat = adam_m / (1 - BETA1 ** (step_index + 1))
        v_hat = adam_v / (1 - BETA2 ** (step_index + 1))
        log_length = state.log_length + self.learning_rate * m_hat / (math.sqrt(v_hat) + 1e-8)
        log_length = min(log_length, math.log(self.max_steps * math.exp(log_step)))
        # Polyak average of T over the second half of warm-up
        half = state.num_warmup // 2
        length_avg = state.length_avg
        if step_index >= half:
            k = step_index - half + 1
            length_avg = length_avg + (math.exp(log_length) - length_avg) / k
        state = state._replace(log_step=log_step, log_step_avg=log_step_avg, error_avg=error_avg,
                               log_length=log_length, adam_m=adam_m, adam_v=adam_v,
                               length_avg=length_avg, count=t)
        # metric: across-chain variance over Stan's windows
        for window_start, window_end in state.windows:
            if window_start <= step_index < window_end:
                state = state._replace(window_sum=state.window_sum + new.position.sum(0),
                                       window_sq=state.window_sq + (new.position**2).sum(0),
                                       window_count=state.window_count
                                       + new.position.shape[0])
                if step_index == window_end - 1:
                    n = state.window_count
                    mean = state.window_sum / n
                    variance = (state.window_sq / n - mean**2) * n / max(n - 1, 1)
                    shrink = 5.0 / (n + 5.0)
                    variance = (1 - shrink) * variance + 1e-3 * shrink
                    state = state._replace(
                        metric=diagonal_metric(variance.expand_as(new.position).clone()),
                        window_sum=torch.zeros_like(state.window_sum),
                        window_sq=torch.zeros_like(state.window_sq), window_count=0,
                        mu=state.log_step + math.log(10), error_avg=0.0, count=0,
                        log_step_avg=0.0)
        if step_index == state.num_warmup - 1:
            state = state._replace(log_step=state.log_step_avg,
                                   log_length=math.log(max(state.length_avg, 1e-8)))
        return state
