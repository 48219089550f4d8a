"""Random-walk Metropolis on unconstrained space, with the scale adapted in warm-up.

Each chain proposes ``x + s * d * eps`` with ``eps ~ N(0, I)``: ``d`` is the chain's
estimate of the posterior's marginal scales (Welford variances over Stan's slow
warm-up windows, regularised as Stan does) and ``s`` a step size driven by
Robbins-Monro towards the optimal acceptance rate (0.234, or 0.44 in one dimension;
Roberts, Gelman & Gilks 1997). Adaptation is per chain, so a chain's draws do not
depend on how many chains run beside it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.metropolis import PROPOSAL_STREAM, MHInfo, MHState, build_mh_step
from bayesdl.inference.warmup_schedule import slow_windows


class RandomWalkState(NamedTuple):
    mh: MHState
    log_step_size: torch.Tensor  # [C]
    scale: torch.Tensor  # [C, D] marginal scale estimate
    window_mean: torch.Tensor  # [C, D] Welford accumulators of the current slow window
    window_m2: torch.Tensor  # [C, D]
    window_count: int
    adapt_count: int
    windows: tuple[tuple[int, int], ...]


def _propose(rng: ChainRNG, step_index: int, position: torch.Tensor, scale: torch.Tensor):
    noise = rng.normal(step_index, PROPOSAL_STREAM, position.shape[1:], dtype=position.dtype)
    return position + scale * noise


_mh_step = build_mh_step(_propose)


class RandomWalkKernel:
    """Batched random-walk Metropolis-Hastings (see the module docstring)."""

    def __init__(self, log_density_fn, target_accept: float | None = None,
                 init_step_size: float | None = None, adapt_scale: bool = True):
        self.log_density_fn = log_density_fn
        self.target_accept = target_accept
        self.init_step_size = init_step_size
        self.adapt_scale = adapt_scale

    def _initial_log_step(self, dim: int) -> float:
        return math.log(self.init_step_size or 2.38 / math.sqrt(max(dim, 1)))

    def _target(self, dim: int) -> float:
        return self.target_accept or (0.44 if dim == 1 else 0.234)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int):
        chains, dim = position.shape
        zeros = torch.zeros_like(position)
        return RandomWalkState(
            mh=MHState(position, log_density),
            log_step_size=torch.full((chains,), self._initial_log_step(dim),
                                     dtype=position.dtype, device=position.device),
            scale=torch.ones_like(position),
            window_mean=zeros,
            window_m2=zeros,
            window_count=0,
            adapt_count=0,
            windows=tuple(slow_windows(num_warmup)) if self.adapt_scale else (),
        )

    def step(self, rng: ChainRNG, step_index: int, state: RandomWalkState, warmup: bool):
        proposal_scale = state.log_step_size.exp()[:, None] * state.scale
        mh, info = _mh_step(rng, step_index, state.mh, self.log_density_fn, proposal_scale)
        state = state._replace(mh=mh)
        if warmup:
            state = self._adapt(state, info, step_index)
        return state, info

    def _adapt(self, state: RandomWalkState, info: MHInfo, step_index: int) -> RandomWalkState:
        dim = state.mh.position.shape[1]
        gain = (state.adapt_count + 1) ** -0.6
        log_step = state.log_step_size + gain * (info.acceptance_rate - self._target(dim))
        state = state._replace(log_step_size=log_step, adapt_count=state.adapt_count + 1)
        for start, end in state.windows:
            if start <= step_index < end:
                count = state.window_count + 1
                delta = state.mh.position - state.window_mean
                mean = state.window_mean + delta / count
                m2 = state.window_m2 + delta * (state.mh.position - mean)
                state = state._replace(window_mean=mean, window_m2=m2, window_count=count)
                if step_index == end - 1:
                    state = self._close_window(state)
        return state

    def _close_window(self, state: RandomWalkState) -> RandomWalkState:
        n = state.window_count
        variance = state.window_m2 / max(n - 1, 1)
        variance = (n / (n + 5.0)) * variance + 1e-3 * (5.0 / (n + 5.0))  # Stan's shrinkage
        dim = state.mh.position.shape[1]
        return state._replace(
            scale=variance.sqrt(),
            log_step_size=torch.full_like(state.log_step_size, self._initial_log_step(dim)),
            window_mean=torch.zeros_like(state.window_mean),
            window_m2=torch.zeros_like(state.window_m2),
            window_count=0,
            adapt_count=0,
        )

    def position(self, state: RandomWalkState) -> torch.Tensor:
        return state.mh.position

    def stats(self, state: RandomWalkState, info: MHInfo) -> dict[str, torch.Tensor]:
        return {
            "acceptance_rate": info.acceptance_rate,
            "lp": state.mh.log_density,
            "step_size": state.log_step_size.exp(),
        }
