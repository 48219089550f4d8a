"""Random-walk Metropolis on unconstrained space, with the proposal adapted in warm-up.

Each chain proposes ``x + s * A @ eps`` with ``eps ~ N(0, I)``. With ``adapt="diag"``
``A = diag(d)``, ``d`` the chain's estimate of the posterior's marginal scales; with
``adapt="full"`` ``A`` is the Cholesky factor of its estimate of the whole posterior
covariance, the adaptive Metropolis of Haario, Saksman & Tamminen (2001). Estimates
are Welford (co)variances over Stan's slow warm-up windows, regularised as Stan does;
``s`` restarts at 2.38 / sqrt(d) (Haario's 2.38^2/d scaling) after every window and is
driven by Robbins-Monro towards the optimal acceptance rate (0.234, or 0.44 in one
dimension; Roberts, Gelman & Gilks 1997). Adaptation is per chain, so a chain's draws
do not depend on how many chains run beside it. The mean and covariance of the last
window are kept in the state: the independence sampler (:mod:`.independence`) proposes
from them after warm-up.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.mass_matrix import Welford, welford_covariance, welford_start, welford_update
from bayesdl.inference.metropolis import (
    PROPOSAL_STREAM,
    MHInfo,
    MHState,
    build_mh_step,
    evaluate_with,
)
from bayesdl.inference.warmup_schedule import slow_windows

ADAPT_CHOICES = ("diag", "full", "none")


class RandomWalkState(NamedTuple):
    mh: MHState
    log_step_size: torch.Tensor  # [C]
    scale: torch.Tensor  # [C, D] marginal scales (diag) or [C, D, D] Cholesky factor (full)
    window: Welford  # moments of the current slow window
    adapt_count: int
    windows: tuple[tuple[int, int], ...]
    fitted_mean: torch.Tensor  # [C, D] mean of the last closed window (the start before)


def apply_scale(scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``scale * noise`` for marginal scales ``[C, D]``, ``L @ noise`` for factors ``[C, D, D]``."""
    if scale.dim() == 3:
        return (scale @ noise.unsqueeze(-1)).squeeze(-1)
    return scale * noise


def _propose(rng: ChainRNG, step_index: int, state: MHState, params: tuple[torch.Tensor, torch.Tensor]):
    step_size, scale = params
    position = state.position
    noise = rng.normal(step_index, PROPOSAL_STREAM, position.shape[1:], dtype=position.dtype)
    return position + step_size[:, None] * apply_scale(scale, noise)


_mh_step = build_mh_step(_propose)


def covariance_factor(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors of ``[C, D, D]`` covariances; a chain whose estimate is not
    positive definite falls back to its marginal scales (no host sync)."""
    factor, info = torch.linalg.cholesky_ex(cov)
    diagonal = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt())
    return torch.where((info == 0)[:, None, None], factor, diagonal)


class RandomWalkKernel:
    """Batched random-walk Metropolis-Hastings (see the module docstring)."""

    def __init__(self, log_density_fn, target_accept: float | None = None,
                 init_step_size: float | None = None, adapt_scale: bool = True,
                 adapt: str = "diag"):
        if adapt not in ADAPT_CHOICES:
            raise BayesdlError(f"adapt must be one of {', '.join(ADAPT_CHOICES)}, got {adapt!r}")
        if target_accept is not None and not 0.0 < target_accept < 1.0:
            raise BayesdlError(f"target_accept must be in (0, 1), got {target_accept}")
        if init_step_size is not None and not init_step_size > 0:
            raise BayesdlError(f"init_step_size must be positive, got {init_step_size}")
        self.log_density_fn = log_density_fn
        self.evaluate = evaluate_with(log_density_fn)
        self.target_accept = target_accept
        self.init_step_size = init_step_size
        self.adapt = adapt if adapt_scale else "none"

    def _initial_log_step(self, dim: int) -> float:
        return math.log(self.init_step_size or 2.38 / math.sqrt(max(dim, 1)))

    def _target(self, dim: int) -> float:
        return self.target_accept or (0.44 if dim == 1 else 0.234)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int):
        chains, dim = position.shape
        full = self.adapt == "full"
        eye = torch.eye(dim, dtype=position.dtype, device=position.device).expand(chains, dim, dim)
        return RandomWalkState(
            mh=MHState(position, log_density),
            log_step_size=torch.full((chains,), self._initial_log_step(dim),
                                     dtype=position.dtype, device=position.device),
            scale=eye.clone() if full else torch.ones_like(position),
            window=welford_start(position, full),
            adapt_count=0,
            windows=tuple(slow_windows(num_warmup)) if self.adapt != "none" else (),
            fitted_mean=position.clone(),
        )

    def step(self, rng: ChainRNG, step_index: int, state: RandomWalkState, warmup: bool):
        params = (state.log_step_size.exp(), state.scale)
        mh, info = _mh_step(rng, step_index, state.mh, self.evaluate, params)
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
                state = state._replace(window=welford_update(state.window, state.mh.position))
                if step_index == end - 1:
                    state = self._close_window(state)
        return state

    def _close_window(self, state: RandomWalkState) -> RandomWalkState:
        cov = welford_covariance(state.window)
        scale = covariance_factor(cov) if cov.dim() == 3 else cov.sqrt()
        dim = state.mh.position.shape[1]
        return state._replace(
            scale=scale,
            log_step_size=torch.full_like(state.log_step_size, self._initial_log_step(dim)),
            fitted_mean=state.window.mean,
            window=welford_start(state.mh.position, cov.dim() == 3),
            adapt_count=0,
        )

    def position(self, state: RandomWalkState) -> torch.Tensor:
        return state.mh.position

    def reevaluate(self, state: RandomWalkState) -> RandomWalkState:
        """The state with its log density recomputed at the current position (the target
        changed: Metropolis-within-Gibbs)."""
        return state._replace(mh=self.evaluate(state.mh.position))

    def stats(self, state: RandomWalkState, info: MHInfo) -> dict[str, torch.Tensor]:
        return {
            "acceptance_rate": info.acceptance_rate,
            "lp": state.mh.log_density,
            "step_size": state.log_step_size.exp(),
        }
