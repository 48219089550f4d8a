"""Independence Metropolis-Hastings: proposals from a Gaussian fitted in warm-up.

During warm-up each chain runs adaptive random-walk Metropolis (:mod:`.random_walk`,
full covariance by default), which estimates the posterior's mean ``m`` and
covariance ``S`` over Stan's slow windows. After warm-up the chain proposes
``x* ~ N(m, k^2 S)`` independently of where it is, accepted with the Hastings ratio
``p(x*) q(x) / (p(x) q(x*))`` (Tierney 1994). ``k`` (``scale``, default 1.2) widens
the proposal so that its tails cover the posterior's: the sampler is then uniformly
ergodic when ``p / q`` is bounded, and it mixes badly when it is not (heavy tails,
funnels), which the acceptance rate shows. A warm-up too short for a window
(< 20 steps) leaves ``m`` at the start and ``S = I``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.metropolis import PROPOSAL_STREAM, MHInfo, MHState, build_mh_step
from bayesdl.inference.pyro_kernel import PyroKernelAdapter
from bayesdl.inference.random_walk import RandomWalkKernel, RandomWalkState, apply_scale


class IndependenceParams(NamedTuple):
    mean: torch.Tensor  # [C, D]
    factor: torch.Tensor  # [C, D] marginal scales or [C, D, D] Cholesky factor, times k


def _propose(rng: ChainRNG, step_index: int, state: MHState, params: IndependenceParams):
    noise = rng.normal(step_index, PROPOSAL_STREAM, state.position.shape[1:],
                       dtype=state.position.dtype)
    return params.mean + apply_scale(params.factor, noise)


def gaussian_log_density(to: MHState, from_: MHState, params: IndependenceParams) -> torch.Tensor:
    """``log N(to; m, F F^T)`` up to a constant that cancels (it does not depend on ``from_``)."""
    residual = to.position - params.mean
    if params.factor.dim() == 3:
        white = torch.linalg.solve_triangular(params.factor, residual.unsqueeze(-1),
                                              upper=False).squeeze(-1)
    else:
        white = residual / params.factor
    return -0.5 * (white**2).sum(-1)


_independence_step = build_mh_step(_propose, gaussian_log_density)


class IndependenceKernel:
    """Batched independence sampler (see the module docstring)."""

    def __init__(self, log_density_fn, scale: float = 1.2, adapt: str = "full",
                 target_accept: float | None = None, init_step_size: float | None = None):
        if not (math.isfinite(scale) and scale > 0):
            raise BayesdlError(f"the independence proposal's scale must be positive, got {scale}")
        if adapt == "none":
            raise BayesdlError("the independence proposal is fitted in warm-up: use adapt=diag|full")
        self.warmup_kernel = RandomWalkKernel(log_density_fn, target_accept, init_step_size,
                                              adapt=adapt)
        self.scale = scale

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int):
        return self.warmup_kernel.init(position, log_density, num_warmup)

    def step(self, rng: ChainRNG, step_index: int, state: RandomWalkState, warmup: bool):
        if warmup:
            return self.warmup_kernel.step(rng, step_index, state, warmup)
        params = IndependenceParams(state.fitted_mean, self.scale * state.scale)
        mh, info = _independence_step(rng, step_index, state.mh, self.warmup_kernel.evaluate,
                                      params)
        return state._replace(mh=mh), info

    def position(self, state: RandomWalkState) -> torch.Tensor:
        return state.mh.position

    def reevaluate(self, state: RandomWalkState) -> RandomWalkState:
        """The state with its log density recomputed at the current position."""
        return self.warmup_kernel.reevaluate(state)

    def stats(self, state: RandomWalkState, info: MHInfo) -> dict[str, torch.Tensor]:
        return {"acceptance_rate": info.acceptance_rate, "lp": state.mh.log_density}


class IndependenceMH(PyroKernelAdapter):
    """The independence sampler as a ``pyro.infer.MCMC`` kernel (fitted in its warm-up)."""

    def __init__(self, model: Callable[..., Any], scale: float = 1.2, adapt: str = "full",
                 init_radius: float = 2.0):
        super().__init__(
            model, lambda potential: IndependenceKernel(potential.log_density, scale, adapt),
            init_radius,
        )
