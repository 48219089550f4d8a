"""The Metropolis-adjusted Langevin algorithm (MALA), batched over chains.

Each chain proposes ``x* = x + (e^2 / 2) M grad log p(x) + e M^(1/2) xi`` with
``xi ~ N(0, I)`` and accepts with the Hastings ratio of this asymmetric proposal
(Roberts & Tweedie 1996). ``M = diag(d^2)``, ``d`` the chain's Welford estimate of the
posterior's marginal scales over Stan's slow warm-up windows (regularised as Stan
does). The step size ``e`` starts at ``d^(-1/6)`` (the optimal scaling of Roberts &
Rosenthal 1998) and is tuned by dual averaging (Nesterov 2009, in Stan's form) towards
acceptance 0.574, restarting after every window; at the end of warm-up it is fixed at
the averaged value. Gradients come from ``BatchedPotential.log_density_and_grad`` (one
vmapped call for every chain) and are carried in the state, so each step evaluates the
model once. Dual averaging is written here because torch and Pyro have no batched
per-chain version of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.batched_mcmc import run_batched_mcmc
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.mass_matrix import Welford, welford_covariance, welford_start, welford_update
from bayesdl.inference.metropolis import PROPOSAL_STREAM, MHInfo, MHState, build_mh_step
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_kernel import PyroKernelAdapter
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.warmup_schedule import slow_windows

LogDensityAndGradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Stan's dual-averaging constants (gamma, t0, kappa), and the initial offset mu = log(10 e0)
_GAMMA, _T0, _KAPPA = 0.05, 10.0, 0.75


class DualAveraging(NamedTuple):
    """Per-chain dual-averaging state ``[C]`` each: the centre ``mu``, the averaged
    acceptance error ``h_bar``, the averaged log step ``log_step_bar``."""

    mu: torch.Tensor
    h_bar: torch.Tensor
    log_step_bar: torch.Tensor


class MALAState(NamedTuple):
    mh: MHState  # with grad
    log_step_size: torch.Tensor  # [C]
    averaging: DualAveraging
    scale: torch.Tensor  # [C, D] marginal scales (M = diag(scale^2))
    window: Welford  # moments of the current slow window (diagonal)
    adapt_count: int
    windows: tuple[tuple[int, int], ...]
    num_warmup: int


class MALAParams(NamedTuple):
    step_size: torch.Tensor  # [C]
    scale: torch.Tensor  # [C, D]


def _drift_mean(state: MHState, params: MALAParams) -> torch.Tensor:
    step = params.step_size[:, None]
    return state.position + 0.5 * step**2 * params.scale**2 * state.grad


def _propose(rng: ChainRNG, step_index: int, state: MHState, params: MALAParams) -> torch.Tensor:
    noise = rng.normal(step_index, PROPOSAL_STREAM, state.position.shape[1:],
                       dtype=state.position.dtype)
    return _drift_mean(state, params) + params.step_size[:, None] * params.scale * noise


def langevin_log_density(to: MHState, from_: MHState, params: MALAParams) -> torch.Tensor:
    """``log q(to | from_)`` of the Langevin proposal, up to a constant shared by both
    directions (``e`` and ``M`` are the same for the forward and the reverse move)."""
    residual = (to.position - _drift_mean(from_, params)) / (params.step_size[:, None] * params.scale)
    return -0.5 * (residual**2).sum(-1)


_mala_step = build_mh_step(_propose, langevin_log_density)


class MALAKernel:
    """Batched MALA with diagonal preconditioning (see the module docstring)."""

    def __init__(self, log_density_and_grad: LogDensityAndGradFn, target_accept: float = 0.574,
                 init_step_size: float | None = None, adapt_scale: bool = True):
        if not 0.0 < target_accept < 1.0:
            raise BayesdlError(f"target_accept must be in (0, 1), got {target_accept}")
        if init_step_size is not None and not init_step_size > 0:
            raise BayesdlError(f"init_step_size must be positive, got {init_step_size}")
        self.log_density_and_grad = log_density_and_grad
        self.target_accept = target_accept
        self.init_step_size = init_step_size
        self.adapt_scale = adapt_scale

    def evaluate(self, position: torch.Tensor) -> MHState:
        with torch.enable_grad():  # the driver runs under no_grad; gradients need autograd
            log_density, grad = self.log_density_and_grad(position)
        return MHState(position, log_density, grad)

    def _restart(self, log_step: torch.Tensor) -> DualAveraging:
        return DualAveraging(log_step + math.log(10.0), torch.zeros_like(log_step), log_step)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> MALAState:
        chains, dim = position.shape
        log_step = torch.full((chains,), math.log(self.init_step_size or dim ** (-1 / 6)),
                              dtype=position.dtype, device=position.device)
        return MALAState(
            mh=self.evaluate(position),
            log_step_size=log_step,
            averaging=self._restart(log_step),
            scale=torch.ones_like(position),
            window=welford_start(position, dense=False),
            adapt_count=0,
            windows=tuple(slow_windows(num_warmup)) if self.adapt_scale else (),
            num_warmup=num_warmup,
        )

    def step(self, rng: ChainRNG, step_index: int, state: MALAState, warmup: bool):
        params = MALAParams(state.log_step_size.exp(), state.scale)
        mh, info = _mala_step(rng, step_index, state.mh, self.evaluate, params)
        state = state._replace(mh=mh)
        if warmup:
            state = self._adapt(state, info, step_index)
        return state, info

    def _adapt(self, state: MALAState, info: MHInfo, step_index: int) -> MALAState:
        t = state.adapt_count + 1
        avg = state.averaging
        weight = 1.0 / (t + _T0)
        h_bar = (1 - weight) * avg.h_bar + weight * (self.target_accept - info.acceptance_rate)
        log_step = avg.mu - math.sqrt(t) / _GAMMA * h_bar
        eta = t ** (-_KAPPA)
        log_step_bar = eta * log_step + (1 - eta) * avg.log_step_bar
        state = state._replace(log_step_size=log_step, adapt_count=t,
                               averaging=DualAveraging(avg.mu, h_bar, log_step_bar))
        for start, end in state.windows:
            if start <= step_index < end:
                state = state._replace(window=welford_update(state.window, state.mh.position))
                if step_index == end - 1:
                    state = self._close_window(state)
        if step_index == state.num_warmup - 1:  # warm-up ends: fix the averaged step size
            state = state._replace(log_step_size=state.averaging.log_step_bar)
        return state

    def _close_window(self, state: MALAState) -> MALAState:
        scale = welford_covariance(state.window).sqrt()
        dim = state.mh.position.shape[1]
        log_step = torch.full_like(state.log_step_size,
                                   math.log(self.init_step_size or dim ** (-1 / 6)))
        return state._replace(
            scale=scale,
            log_step_size=log_step,
            averaging=self._restart(log_step),
            window=welford_start(state.mh.position, dense=False),
            adapt_count=0,
        )

    def position(self, state: MALAState) -> torch.Tensor:
        return state.mh.position

    def reevaluate(self, state: MALAState) -> MALAState:
        """The state with its log density and gradient recomputed at the current position
        (the target changed: Metropolis-within-Gibbs)."""
        return state._replace(mh=self.evaluate(state.mh.position))

    def stats(self, state: MALAState, info: MHInfo) -> dict[str, torch.Tensor]:
        return {
            "acceptance_rate": info.acceptance_rate,
            "lp": state.mh.log_density,
            "step_size": state.log_step_size.exp(),
        }


class MALA(PyroKernelAdapter):
    """MALA as a ``pyro.infer.MCMC`` kernel."""

    def __init__(self, model: Callable[..., Any], target_accept: float = 0.574,
                 init_step_size: float | None = None, init_radius: float = 2.0):
        super().__init__(
            model,
            lambda potential: MALAKernel(potential.log_density_and_grad, target_accept,
                                         init_step_size),
            init_radius,
        )


@dataclass
class MALAOptions:
    """Options of ``--method mala``: ``init_step_size`` 0 means dim^(-1/6);
    ``adapt_scale`` false keeps the identity preconditioner."""

    target_accept: float = 0.574
    init_step_size: float = 0.0
    adapt_scale: bool = True
    init_radius: float = 2.0


def run_mala(spec: ModelSpec, options: MALAOptions, settings: RunSettings) -> Samples:
    """``--method mala``: all chains in one batch (see :class:`MALAKernel`)."""

    def make_kernel(potential):
        return MALAKernel(potential.log_density_and_grad, options.target_accept,
                          options.init_step_size or None, options.adapt_scale)

    return run_batched_mcmc(spec, settings, make_kernel, "mala", init_radius=options.init_radius)


def mala_factory(options: MALAOptions) -> Callable[..., MALAKernel]:
    """The continuous kernel of ``--method sw+mala`` / ``gibbs+mala`` (Metropolis-within-Gibbs):
    ``make(log_density_fn, log_density_and_grad_fn)``."""

    def make(log_density_fn, log_density_and_grad_fn) -> MALAKernel:
        return MALAKernel(log_density_and_grad_fn, options.target_accept,
                          options.init_step_size or None, options.adapt_scale)

    return make
