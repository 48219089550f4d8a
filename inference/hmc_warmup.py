"""Stan's windowed warm-up for HMC-type kernels, per chain.

Step size: dual averaging all through warm-up, restarted (with Stan's heuristic for
a fresh start) whenever the metric changes; the averaged step size is used after
warm-up. Metric: Welford moments over the doubling slow windows of
:func:`~bayesdl.inference.warmup_schedule.slow_windows`, diagonal or dense.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.integrator import Metric, PhasePoint, PotentialFn, unit_metric
from bayesdl.inference.mass_matrix import Welford, welford_metric, welford_start, welford_update
from bayesdl.inference.step_size import (
    DualAveraging,
    dual_averaging_start,
    dual_averaging_update,
    reasonable_step_size,
)
from bayesdl.inference.warmup_schedule import slow_windows


class WarmupState(NamedTuple):
    step_size: torch.Tensor  # [C], the step size the next transition uses
    metric: Metric
    dual: DualAveraging
    welford: Welford
    windows: tuple[tuple[int, int], ...]
    num_warmup: int
    started: bool  # the step-size heuristic has run


class StanWarmup:
    """Configuration of the warm-up; the changing parts live in :class:`WarmupState`."""

    def __init__(self, target_accept: float = 0.8, dense: bool = False,
                 adapt_step_size: bool = True, adapt_metric: bool = True,
                 init_step_size: float = 1.0):
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.target_accept = target_accept
        self.dense = dense
        self.adapt_step_size = adapt_step_size
        self.adapt_metric = adapt_metric
        self.init_step_size = init_step_size

    def init(self, position: torch.Tensor, num_warmup: int) -> WarmupState:
        step_size = torch.full(position.shape[:1], float(self.init_step_size),
                               dtype=position.dtype, device=position.device)
        return WarmupState(
            step_size=step_size,
            metric=unit_metric(position, self.dense),
            dual=dual_averaging_start(step_size.log()),
            welford=welford_start(position, self.dense),
            windows=tuple(slow_windows(num_warmup)) if self.adapt_metric else (),
            num_warmup=num_warmup,
            started=False,
        )

    def begin(self, rng: ChainRNG, step_index: int, state: WarmupState, point: PhasePoint,
              potential_fn: PotentialFn) -> WarmupState:
        """Before the first warm-up transition: Stan's step-size heuristic."""
        if state.started or not self.adapt_step_size:
            return state._replace(started=True)
        step_size = reasonable_step_size(rng, step_index, point, state.metric, potential_fn,
                                         state.step_size)
        return state._replace(step_size=step_size, dual=dual_averaging_start(step_size.log()),
                              started=True)

    def update(self, rng: ChainRNG, step_index: int, state: WarmupState, point: PhasePoint,
               accept_prob: torch.Tensor, potential_fn: PotentialFn) -> WarmupState:
        """After warm-up transition ``step_index`` landed at ``point``."""
        if self.adapt_step_size:
            dual = dual_averaging_update(state.dual, accept_prob, self.target_accept)
            state = state._replace(dual=dual, step_size=dual.log_step.exp())
        for start, end in state.windows:
            if start <= step_index < end:
                state = state._replace(welford=welford_update(state.welford, point.position))
                if step_index == end - 1:
                    state = self._close_window(rng, step_index, state, point, potential_fn)
        if step_index == state.num_warmup - 1 and self.adapt_step_size:
            state = state._replace(step_size=state.dual.log_step_avg.exp())
        return state

    def _close_window(self, rng: ChainRNG, step_index: int, state: WarmupState,
                      point: PhasePoint, potential_fn: PotentialFn) -> WarmupState:
        metric = welford_metric(state.welford)
        step_size = state.step_size
        if self.adapt_step_size:
            step_size = reasonable_step_size(rng, step_index, point, metric, potential_fn,
                                             step_size)
        return state._replace(
            metric=metric,
            step_size=step_size,
            dual=dual_averaging_start(step_size.log()),
            welford=welford_start(point.position, self.dense),
        )
