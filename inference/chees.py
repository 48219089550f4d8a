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

The adaptation's scalars are 0-dim tensors on the chains' device, so a transition is
three pieces of pure tensor code: the momentum draw (:meth:`ChEESKernel._begin`), the
leapfrog steps (:mod:`~bayesdl.inference.trajectory`) and acceptance with adaptation
(:meth:`ChEESKernel._finish`). On CUDA the first and last are CUDA graphs
(:mod:`~bayesdl.inference.graphed_call`) and the steps a replayed graph, so a transition
is a few launches; the host reads one pair of numbers per warm-up iteration (step size
and T, for the next step count) and none while drawing.

Because adaptation pools the chains, a chain's draws depend on the others (unlike our
NUTS); the seeding contract is per run: the same seed and chain count give the same draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG, uniform_grid_at
from bayesdl.inference.graphed_call import graphed_call
from bayesdl.inference.integrator import (
    HamiltonianKernel,
    Metric,
    PhasePoint,
    PotentialFn,
    diagonal_metric,
    hamiltonian,
    leapfrog,
    momentum_from_noise,
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
_HALTON_BITS = 62  # step indices below 2**62


def halton(index: int, base: int = 2) -> float:
    """The ``index``-th element (1-based) of the van der Corput sequence in ``base``."""
    result, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


def halton_base2(index: torch.Tensor) -> torch.Tensor:
    """:func:`halton` in base 2 of a 0-dim int64 tensor (below 2**53), float64 on its
    device: the bits reversed as an int64 (exact) times 2**-62, so exactly the host's
    number, with no host read."""
    shifts = torch.arange(_HALTON_BITS, device=index.device)
    bits = torch.bitwise_right_shift(index, shifts) & 1
    reversed_bits = torch.bitwise_left_shift(bits, _HALTON_BITS - 1 - shifts).sum()
    return reversed_bits.to(torch.float64) * 2.0**-_HALTON_BITS


class ChEESAdaptation(NamedTuple):
    """The warm-up's scalars, 0-dim float64 tensors on the chains' device."""

    log_step: torch.Tensor  # the step size used now, shared by all chains
    log_step_avg: torch.Tensor
    error_avg: torch.Tensor
    mu: torch.Tensor
    log_length: torch.Tensor  # log trajectory length
    adam_m: torch.Tensor
    adam_v: torch.Tensor
    length_avg: torch.Tensor  # Polyak average of T over the second half of warm-up
    count: torch.Tensor  # dual-averaging updates since the last restart


class MetricWindow(NamedTuple):
    """Across-chain position moments summed over the current slow window."""

    total: torch.Tensor  # [D]
    squares: torch.Tensor  # [D]
    count: torch.Tensor  # 0-dim float64: positions summed


class ChEESState(NamedTuple):
    point: PhasePoint
    metric: Metric
    adaptation: ChEESAdaptation
    window: MetricWindow
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
    to the same draws; on CUDA ``cuda_graph`` also captures the rest of the transition.
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
        self._calls: dict[str, Callable[..., Any]] = {}
        self._windows: tuple[tuple[int, int], ...] | None = None
        self._num_warmup = -1
        self._window_bounds: tuple[torch.Tensor, ...] = ()
        self._host_scalars: tuple[tuple[torch.Tensor, torch.Tensor], tuple[float, float]] | None = None

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> ChEESState:
        log_density, grad = self.potential_fn(position)
        if (self.trajectory is None and self.traced_gradient is not None
                and self.traced_gradient.shape == position.shape):
            try:
                self.trajectory = leapfrog_trajectory(self.traced_gradient, position,
                                                      torch.ones_like(position), self.cuda_graph)
            except Exception as error:  # noqa: BLE001 - TorchScript declined: from Python
                warnings.warn(f"scripting the leapfrog trajectory failed ({type(error).__name__}); "
                              "stepping from Python", stacklevel=2)
        windows = tuple(slow_windows(num_warmup))
        self._configure(windows, num_warmup, position.device)

        def scalar(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=torch.float64, device=position.device)

        log_step = math.log(self.init_step_size)
        zero = scalar(0.0)
        adaptation = ChEESAdaptation(
            log_step=scalar(log_step), log_step_avg=zero, error_avg=zero,
            mu=scalar(log_step + math.log(10)), log_length=scalar(math.log(self.init_trajectory_length)),
            adam_m=zero, adam_v=zero, length_avg=zero, count=zero)
        return ChEESState(
            point=PhasePoint(position, log_density, grad),
            metric=diagonal_metric(torch.ones_like(position)),
            adaptation=adaptation,
            window=MetricWindow(torch.zeros_like(position[0]), torch.zeros_like(position[0]), zero),
            windows=windows, num_warmup=num_warmup, started=False,
        )

    def _configure(self, windows: tuple[tuple[int, int], ...], num_warmup: int,
                   device: torch.device) -> None:
        """The run's warm-up constants, baked into its graphs (a new run captures its own)."""
        self._calls = {}
        self._host_scalars = None
        self._windows, self._num_warmup = windows, num_warmup
        self._window_bounds = tuple(
            torch.tensor([w[i] for w in windows], dtype=torch.int64, device=device) for i in (0, 1))

    def step(self, rng: ChainRNG, step_index: int, state: ChEESState,
             warmup: bool) -> tuple[ChEESState, ChEESInfo]:
        if (state.windows, state.num_warmup) != (self._windows, self._num_warmup):
            self._configure(state.windows, state.num_warmup, state.point.position.device)
        if not state.started:
            state = self._start_step_size(rng, step_index, state)
        step_size, length = self._step_size_and_length(state.adaptation, warmup)
        steps = min(max(1, math.ceil(halton(step_index + 1) * length / step_size)), self.max_steps)
        point0, metric = state.point, state.metric
        step = torch.full((), step_index, dtype=torch.int64, device=point0.position.device)
        begin = (rng.keys, step, point0, metric.inverse_mass, state.adaptation.log_step)
        momentum, energy0, eps = self._call("begin", self._begin, begin)
        if self.trajectory is not None and point0.position.shape == self.traced_gradient.shape:
            position, log_density, grad, r = self.trajectory(
                point0.position, momentum, point0.grad, eps, metric.inverse_mass, steps)
            point = PhasePoint(position, log_density, grad)
        else:
            point, r = point0, momentum
            for _ in range(steps):
                point, r = leapfrog(point, r, eps, metric, self.potential_fn)
        finish = (rng.keys, step, point0, point, r, energy0, metric.inverse_mass,
                  state.adaptation, state.window)
        if warmup:
            new, adaptation, window, info = self._call("finish_warmup", self._finish_warmup, finish)
            state = self._end_of_window(step_index, state._replace(
                point=new, adaptation=adaptation, window=window))
        else:
            new, info = self._call("finish", self._finish, finish)
            state = state._replace(point=new)
        return state, ChEESInfo(info[0], torch.full_like(info[0], float(steps)), *info[1:])

    # -- the transition's pure tensor pieces (CUDA graphs on a GPU) -------------------

    def _call(self, name: str, fn: Callable[..., Any], args: tuple) -> Any:
        """``fn(*args)``, on CUDA (with ``cuda_graph``) through its graph, captured at the
        first call of the run."""
        call = self._calls.get(name)
        if call is None:
            call = transition_call(fn, args, f"ChEES's {name.replace('_', ' ')}", self.cuda_graph)
            self._calls[name] = call
        return call(*args)

    def _begin(self, keys: torch.Tensor, step: torch.Tensor, point0: PhasePoint,
               inverse_mass: torch.Tensor, log_step: torch.Tensor):
        """The momentum ``r ~ N(0, M)``, the start's energy, the step size per chain."""
        like = point0.position
        noise = torch.special.ndtri(uniform_grid_at(keys, step, MOMENTUM_STREAM, like.shape[1]))
        metric = diagonal_metric(inverse_mass)
        momentum = momentum_from_noise(noise.to(like.dtype), metric)
        energy0 = hamiltonian(point0, momentum, metric)
        eps = log_step.exp().to(like.dtype).expand(like.shape[0])
        return momentum, energy0, eps

    def _accept(self, keys: torch.Tensor, step: torch.Tensor, point0: PhasePoint,
                point: PhasePoint, momentum: torch.Tensor, energy0: torch.Tensor,
                inverse_mass: torch.Tensor):
        """Metropolis acceptance per chain: (new point, acceptance probability, whether it
        diverged, its energy)."""
        energy = hamiltonian(point, momentum, diagonal_metric(inverse_mass))
        log_ratio = torch.nan_to_num(energy0 - energy, nan=-math.inf)
        accept_prob = log_ratio.clamp(max=0).exp()
        log_u = uniform_grid_at(keys, step, ACCEPT_STREAM, 1)[:, 0].to(energy0.dtype).log()
        accept = log_u < log_ratio
        new = select_point(accept, point, point0)
        return new, accept_prob, log_ratio < -self.max_energy_error, torch.where(accept, energy, energy0)

    def _finish(self, keys, step, point0, point, momentum, energy0, inverse_mass, adaptation,
                window):
        """A draw's acceptance: the new point and the info's per-chain fields (after
        acceptance rate, step count)."""
        new, accept_prob, diverging, energy = self._accept(keys, step, point0, point, momentum,
                                                           energy0, inverse_mass)
        return new, self._info(accept_prob, diverging, energy, adaptation.log_step, adaptation)

    def _finish_warmup(self, keys, step, point0, point, momentum, energy0, inverse_mass,
                       adaptation, window):
        """A warm-up transition's acceptance and the adaptation of step size, trajectory
        length and the metric's window sums."""
        new, accept_prob, diverging, energy = self._accept(keys, step, point0, point, momentum,
                                                           energy0, inverse_mass)
        adapted = self._adapt(step, adaptation, point0, point, momentum,
                              diagonal_metric(inverse_mass), accept_prob)
        in_window = ((step >= self._window_bounds[0]) & (step < self._window_bounds[1])).any()
        window = MetricWindow(
            torch.where(in_window, window.total + new.position.sum(0), window.total),
            torch.where(in_window, window.squares + (new.position**2).sum(0), window.squares),
            torch.where(in_window, window.count + new.position.shape[0], window.count))
        return new, adapted, window, self._info(accept_prob, diverging, energy,
                                                adaptation.log_step, adapted)

    @staticmethod
    def _info(accept_prob, diverging, energy, log_step_used, adaptation):
        like = accept_prob
        return (accept_prob, diverging, energy, log_step_used.exp().to(like.dtype).expand_as(like),
                adaptation.log_length.exp().to(like.dtype).expand_as(like))

    def _adapt(self, step: torch.Tensor, a: ChEESAdaptation, start: PhasePoint, end: PhasePoint,
               end_momentum: torch.Tensor, metric: Metric,
               accept_prob: torch.Tensor) -> ChEESAdaptation:
        # step size: dual averaging on the harmonic mean acceptance across chains
        t = a.count + 1
        harmonic = 1.0 / (1.0 / accept_prob.clamp(min=1e-10)).mean()
        error_avg = (1 - 1 / (t + 10)) * a.error_avg + (self.target_accept - harmonic) / (t + 10)
        log_step = a.mu - t.sqrt() / 0.05 * error_avg
        weight = t ** -0.75
        log_step_avg = weight * log_step + (1 - weight) * a.log_step_avg
        # trajectory length: Adam on the ChEES gradient (acceptance-weighted across chains)
        finite = torch.isfinite(end.position).all(-1) & (accept_prob > 0)
        centre_end = torch.where(finite[:, None], end.position, 0).sum(0) / finite.sum().clamp(min=1)
        centre_start = start.position.mean(0)
        spread_end = ((end.position - centre_end) ** 2).sum(-1)
        spread_start = ((start.position - centre_start) ** 2).sum(-1)
        chees = ((spread_end - spread_start)
                 * ((end.position - centre_end) * velocity(end_momentum, metric)).sum(-1))
        weights = torch.where(finite, accept_prob, 0)
        gradient = (weights * torch.nan_to_num(chees)).sum() / weights.sum().clamp(min=1e-10)
        # d/dlog T of the jittered end point
        gradient = gradient.to(torch.float64) * halton_base2(step + 1) * a.log_length.exp()
        # Adam with fast moment estimates (beta1 = 0, beta2 = 0.5, as TFP's ChEES): the
        # gradient's scale changes by orders of magnitude between the first transient and
        # the stationary phase, and a slow second moment (0.999) kept the early huge
        # gradients for hundreds of steps, freezing T
        iteration = (step + 1).to(torch.float64)
        adam_m = BETA1 * a.adam_m + (1 - BETA1) * gradient
        adam_v = BETA2 * a.adam_v + (1 - BETA2) * gradient**2
        m_hat = adam_m / (1 - BETA1**iteration)
        v_hat = adam_v / (1 - BETA2**iteration)
        log_length = a.log_length + self.learning_rate * m_hat / (v_hat.sqrt() + 1e-8)
        log_length = torch.minimum(log_length, math.log(self.max_steps) + log_step)
        # Polyak average of T over the second half of warm-up
        since_half = (step - self._num_warmup // 2 + 1).to(torch.float64)
        length_avg = torch.where(since_half >= 1,
                                 a.length_avg + (log_length.exp() - a.length_avg) / since_half.clamp(min=1),
                                 a.length_avg)
        return ChEESAdaptation(log_step, log_step_avg, error_avg, a.mu, log_length, adam_m,
                               adam_v, length_avg, t)

    # -- the host's part: step counts, windows' ends, the start ---------------------

    def _step_size_and_length(self, adaptation: ChEESAdaptation, warmup: bool) -> tuple[float, float]:
        """The step size and T as numbers (the step count is a host loop bound): read from
        the device at every warm-up iteration, once when drawing (fixed then)."""
        key = (adaptation.log_step, adaptation.log_length)
        cached = self._host_scalars
        if warmup or cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
            log_step, log_length = torch.stack(key).tolist()
            cached = (key, (math.exp(log_step), math.exp(log_length)))
            self._host_scalars = None if warmup else cached
        return cached[1]

    def _end_of_window(self, step_index: int, state: ChEESState) -> ChEESState:
        """At a slow window's last iteration: the metric from its positions and dual
        averaging restarted; at warm-up's last: the averaged step size and T."""
        a = state.adaptation
        for _, window_end in state.windows:
            if step_index == window_end - 1:
                n = state.window.count
                mean = state.window.total / n
                variance = (state.window.squares / n - mean**2) * n / (n - 1).clamp(min=1)
                shrink = 5.0 / (n + 5.0)
                variance = (1 - shrink) * variance + 1e-3 * shrink
                position = state.point.position
                zero = torch.zeros_like(a.count)
                a = a._replace(mu=a.log_step + math.log(10), error_avg=zero, count=zero,
                               log_step_avg=zero)
                state = state._replace(
                    metric=diagonal_metric(variance.to(position.dtype).expand_as(position).clone()),
                    window=MetricWindow(torch.zeros_like(state.window.total),
                                        torch.zeros_like(state.window.squares), zero))
        if step_index == state.num_warmup - 1:
            a = a._replace(log_step=a.log_step_avg.clone(),
                           log_length=a.length_avg.clamp(min=1e-8).log())
        return state._replace(adaptation=a)

    def _start_step_size(self, rng: ChainRNG, step_index: int, state: ChEESState) -> ChEESState:
        a = state.adaptation
        per_chain = reasonable_step_size(
            rng, step_index, state.point, state.metric, self.potential_fn,
            a.log_step.exp().to(state.point.log_density.dtype).expand_as(state.point.log_density))
        log_step = per_chain.log().median().to(torch.float64)
        return state._replace(adaptation=a._replace(log_step=log_step, mu=log_step + math.log(10)),
                              started=True)


def transition_call(fn: Callable[..., Any], example_args: tuple, what: str,
                    cuda_graph: bool) -> Callable[..., Any]:
    """``fn`` itself, or on CUDA with ``cuda_graph`` captured as a CUDA graph
    (:func:`~bayesdl.inference.graphed_call.graphed_call`); a module function so that
    CPU tests can swap in the graph's buffer logic (``capture=False``)."""
    if not cuda_graph or example_args[0].device.type != "cuda":
        return fn
    return graphed_call(fn, example_args, capture=True, what=what)
