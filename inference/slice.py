"""Univariate slice sampling swept over coordinates (Neal 2003), batched over chains.

One step updates coordinates 1..D in turn. For coordinate j every chain draws a slice
level ``log y = log p(x) - Exp(1)``, places an interval of width ``w_j`` at random
around ``x_j``, steps it out by ``w_j`` at a time while its ends are inside the slice
(at most ``max_steps_out`` steps in all, split at random between the two ends, which
keeps the update exact; Neal 2003, fig. 3), then draws uniformly from the interval and
shrinks it towards ``x_j`` until a draw lands in the slice. Chains that are done wait
under a mask while the others go on, so every loop is over iterations, never over
chains; each stepping-out and each shrinkage iteration reads one boolean back from the
device (``.all()``) to stop as soon as every chain is done, and both loops have a
bound (``max_steps_out``; ``max_shrink`` shrinkage draws, after which a chain that has
still not landed, which takes an interval shrunk ~2^-max_shrink times, keeps ``x_j``).

The loop over coordinates is the algorithm (each update conditions on the last), so it
is a Python loop of D iterations per step, each one vectorised over chains. Widths are
adapted in warm-up: ``w = width_scale * d``, ``d`` the chain's Welford estimate of the
marginal scales over Stan's slow windows (``init_width`` before the first window
closes). Every random number comes from the chain's ``ChainRNG`` on a counter unique to
(step, coordinate, purpose). Written by hand because no library has a batched one.
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
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_kernel import PyroKernelAdapter
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.warmup_schedule import slow_windows

LEVEL_STREAM = 1
OFFSET_STREAM = 2
SPLIT_STREAM = 3
SHRINK_STREAM = 16  # shrinkage draw k uses stream SHRINK_STREAM + k
MAX_SHRINK_LIMIT = 10_000  # streams stay clear of the next step's and of the start draws


class SliceState(NamedTuple):
    position: torch.Tensor  # [C, D]
    log_density: torch.Tensor  # [C]
    width: torch.Tensor  # [C, D]
    window: Welford  # moments of the current slow window (diagonal)
    windows: tuple[tuple[int, int], ...]


class SliceInfo(NamedTuple):
    acceptance_rate: torch.Tensor  # [C], always 1: a slice update is never rejected
    n_steps: torch.Tensor  # [C] log-density evaluations this chain needed in the sweep


def coordinate_counter(step_index: int, dim: int, coordinate: int) -> int:
    """The ChainRNG ``step`` argument for coordinate ``coordinate`` of sweep ``step_index``:
    distinct for every (sweep, coordinate), so no two draws share a counter."""
    return step_index * dim + coordinate


class SliceKernel:
    """Batched coordinate-wise slice sampler (see the module docstring)."""

    def __init__(self, log_density_fn: Callable[[torch.Tensor], torch.Tensor],
                 init_width: float = 1.0, width_scale: float = 3.0, max_steps_out: int = 20,
                 max_shrink: int = 100, adapt_width: bool = True):
        for name, value in (("init_width", init_width), ("width_scale", width_scale)):
            if not (math.isfinite(value) and value > 0):
                raise BayesdlError(f"{name} must be a positive number, got {value}")
        if not 0 <= max_steps_out:
            raise BayesdlError(f"max_steps_out must be >= 0, got {max_steps_out}")
        if not 1 <= max_shrink <= MAX_SHRINK_LIMIT:
            raise BayesdlError(f"max_shrink must be in 1..{MAX_SHRINK_LIMIT}, got {max_shrink}")
        self.log_density_fn = log_density_fn
        self.init_width = init_width
        self.width_scale = width_scale
        self.max_steps_out = int(max_steps_out)
        self.max_shrink = int(max_shrink)
        self.adapt_width = adapt_width

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> SliceState:
        return SliceState(
            position=position,
            log_density=log_density,
            width=torch.full_like(position, self.init_width),
            window=welford_start(position, dense=False),
            windows=tuple(slow_windows(num_warmup)) if self.adapt_width else (),
        )

    def _with_coordinate(self, x: torch.Tensor, j: int, value: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, j] = value
        return out

    def _update_coordinate(self, rng: ChainRNG, counter: int, x: torch.Tensor,
                           log_density: torch.Tensor, width: torch.Tensor, j: int):
        dtype = x.dtype
        log_level = log_density + torch.log(rng.uniform(counter, LEVEL_STREAM, (), dtype))
        xj = x[:, j]
        left = xj - width * rng.uniform(counter, OFFSET_STREAM, (), dtype)
        right = left + width
        evaluations = torch.zeros_like(log_density)
        # stepping out: J steps at most to the left, m - 1 - J to the right
        m = self.max_steps_out
        steps_left = torch.floor(m * rng.uniform(counter, SPLIT_STREAM, (), dtype))
        steps_right = (m - 1) - steps_left
        grow_left = torch.ones_like(xj, dtype=torch.bool)
        grow_right = torch.ones_like(xj, dtype=torch.bool)
        for k in range(m):
            grow_left = grow_left & (steps_left > k)
            grow_right = grow_right & (steps_right > k)
            if not bool((grow_left | grow_right).any()):
                break
            # two [C, D] calls, not one [2C, D]: a target may be tied to its chains (composition)
            at_left = self.log_density_fn(self._with_coordinate(x, j, left))
            at_right = self.log_density_fn(self._with_coordinate(x, j, right))
            evaluations = evaluations + grow_left.to(dtype) + grow_right.to(dtype)
            grow_left = grow_left & (at_left > log_level)
            grow_right = grow_right & (at_right > log_level)
            left = torch.where(grow_left, left - width, left)
            right = torch.where(grow_right, right + width, right)
        # shrinkage
        done = torch.zeros_like(grow_left)
        new_xj, new_log_density = xj, log_density
        for k in range(self.max_shrink):
            candidate = left + (right - left) * rng.uniform(counter, SHRINK_STREAM + k, (), dtype)
            at_candidate = self.log_density_fn(self._with_coordinate(x, j, candidate))
            evaluations = evaluations + (~done).to(dtype)
            landed = ~done & (at_candidate > log_level)
            new_xj = torch.where(landed, candidate, new_xj)
            new_log_density = torch.where(landed, at_candidate, new_log_density)
            missed = ~done & ~landed
            left = torch.where(missed & (candidate < xj), candidate, left)
            right = torch.where(missed & (candidate >= xj), candidate, right)
            done = done | landed
            if bool(done.all()):
                break
        return self._with_coordinate(x, j, new_xj), new_log_density, evaluations

    def step(self, rng: ChainRNG, step_index: int, state: SliceState, warmup: bool):
        x, log_density = state.position, state.log_density
        dim = x.shape[1]
        evaluations = torch.zeros_like(log_density)
        for j in range(dim):
            x, log_density, used = self._update_coordinate(
                rng, coordinate_counter(step_index, dim, j), x, log_density, state.width[:, j], j
            )
            evaluations = evaluations + used
        state = state._replace(position=x, log_density=log_density)
        if warmup:
            state = self._adapt(state, step_index)
        return state, SliceInfo(torch.ones_like(log_density), evaluations)

    def _adapt(self, state: SliceState, step_index: int) -> SliceState:
        for start, end in state.windows:
            if start <= step_index < end:
                state = state._replace(window=welford_update(state.window, state.position))
                if step_index == end - 1:
                    scale = welford_covariance(state.window).sqrt()
                    state = state._replace(width=self.width_scale * scale,
                                           window=welford_start(state.position, dense=False))
        return state

    def position(self, state: SliceState) -> torch.Tensor:
        return state.position

    def reevaluate(self, state: SliceState) -> SliceState:
        """The state with its log density recomputed at the current position (the target
        changed: Metropolis-within-Gibbs)."""
        return state._replace(log_density=self.log_density_fn(state.position))

    def stats(self, state: SliceState, info: SliceInfo) -> dict[str, torch.Tensor]:
        return {"lp": state.log_density, "n_steps": info.n_steps}


class Slice(PyroKernelAdapter):
    """Coordinate-wise slice sampling as a ``pyro.infer.MCMC`` kernel."""

    def __init__(self, model: Callable[..., Any], init_width: float = 1.0, width_scale: float = 3.0,
                 max_steps_out: int = 20, max_shrink: int = 100, init_radius: float = 2.0):
        super().__init__(
            model,
            lambda potential: SliceKernel(potential.log_density, init_width, width_scale,
                                          max_steps_out, max_shrink),
            init_radius,
        )


@dataclass
class SliceOptions:
    """Options of ``--method slice`` (widths are ``width_scale`` x the warm-up scales,
    ``init_width`` before the first window closes)."""

    init_width: float = 1.0
    width_scale: float = 3.0
    max_steps_out: int = 20
    max_shrink: int = 100
    adapt_width: bool = True
    init_radius: float = 2.0


def run_slice(spec: ModelSpec, options: SliceOptions, settings: RunSettings) -> Samples:
    """``--method slice``: all chains in one batch (see :class:`SliceKernel`)."""

    def make_kernel(potential):
        return SliceKernel(potential.log_density, options.init_width, options.width_scale,
                           options.max_steps_out, options.max_shrink, options.adapt_width)

    return run_batched_mcmc(spec, settings, make_kernel, "slice", init_radius=options.init_radius)


def slice_factory(options: SliceOptions) -> Callable[..., SliceKernel]:
    """The continuous kernel of ``--method sw+slice`` / ``gibbs+slice`` (Metropolis-within-Gibbs):
    ``make(log_density_fn, log_density_and_grad_fn)``."""

    def make(log_density_fn, log_density_and_grad_fn=None) -> SliceKernel:
        return SliceKernel(log_density_fn, options.init_width, options.width_scale,
                           options.max_steps_out, options.max_shrink, options.adapt_width)

    return make
