"""Stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin 2014), batched.

With ``v = e r`` (step times momentum), learning rate ``eta = e^2``, friction
``alpha = e C`` and noise estimate ``beta_hat = eta V_hat / 2`` (their eq. 15) every
chain does

    v <- (1 - alpha) v + eta grad log p~(theta) + N(0, 2 (alpha - beta_hat) eta)
    theta <- theta + v

where ``grad log p~`` may be a noisy (mini-batch) gradient whose noise variance per
coordinate is ``V_hat``: the injected noise is reduced by what the gradient already
brings, so the stationary law stays right as ``eta -> 0``. There is no Metropolis
correction. ``V_hat`` is a number or ``[D]`` tensor given to the kernel, or the third
value returned by the gradient function (e.g. the variance of per-example gradients);
it is clipped so that ``beta_hat <= alpha``. Momentum can be redrawn every
``resample_every`` steps. Written here because torch/Pyro have no SGHMC; random numbers
come from the chains' counter-based streams, so chain ``c`` is reproducible alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

NOISE_STREAM = 61_001
MOMENTUM_STREAM = 61_002

# (position [C, D], step index) -> (log density [C], gradient [C, D]) or with V_hat [C, D] too
GradientFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]


class SGHMCState(NamedTuple):
    position: torch.Tensor  # [C, D]
    velocity: torch.Tensor  # [C, D], v = step * momentum
    log_density: torch.Tensor  # [C] (noisy when the gradient is)
    grad: torch.Tensor  # [C, D]
    noise_variance: torch.Tensor  # [C, D] or [D] or [] V_hat at the position


class SGHMCKernel:
    """SGHMC on the batched-kernel protocol (see the module docstring)."""

    def __init__(self, gradient_fn: GradientFn, learning_rate: float, friction: float = 0.1,
                 noise_variance: float | torch.Tensor = 0.0, resample_every: int = 0):
        if not learning_rate > 0 or not math.isfinite(learning_rate):
            raise BayesdlError(f"sghmc: learning_rate must be positive, got {learning_rate}")
        if not 0 < friction <= 1:
            raise BayesdlError(f"sghmc: friction must be in (0, 1], got {friction}")
        if resample_every < 0:
            raise BayesdlError(f"sghmc: resample_every must be >= 0, got {resample_every}")
        self.gradient_fn = gradient_fn
        self.learning_rate = float(learning_rate)
        self.friction = float(friction)
        self.noise_variance = torch.as_tensor(noise_variance)
        if bool((self.noise_variance < 0).any()):
            raise BayesdlError("sghmc: noise_variance must be >= 0")
        self.resample_every = resample_every

    def evaluate(self, position: torch.Tensor, step_index: int) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            out = self.gradient_fn(position, step_index)
        log_density, grad = out[0].detach(), out[1].detach()
        noise = out[2].detach() if len(out) > 2 else self.noise_variance.to(position)
        return log_density, grad, noise

    def init(self, position: torch.Tensor, log_density: torch.Tensor | None = None,
             num_warmup: int = 0) -> SGHMCState:
        lp, grad, noise = self.evaluate(position, -1)
        return SGHMCState(position, torch.zeros_like(position), lp, grad, noise)

    def injected_variance(self, noise_variance: torch.Tensor) -> torch.Tensor:
        """``2 (alpha - beta_hat) eta`` with ``beta_hat = eta V_hat / 2`` clipped to ``alpha``."""
        beta_hat = (0.5 * self.learning_rate * noise_variance).clamp(max=self.friction)
        return 2.0 * (self.friction - beta_hat) * self.learning_rate

    def step(self, rng: ChainRNG, step_index: int, state: SGHMCState, warmup: bool
             ) -> tuple[SGHMCState, None]:
        shape, dtype = state.position.shape[1:], state.position.dtype
        velocity = state.velocity
        if self.resample_every and step_index % self.resample_every == 0:
            velocity = math.sqrt(self.learning_rate) * rng.normal(step_index, MOMENTUM_STREAM,
                                                                   shape, dtype)
        noise = rng.normal(step_index, NOISE_STREAM, shape, dtype)
        velocity = ((1 - self.friction) * velocity + self.learning_rate * state.grad
                    + self.injected_variance(state.noise_variance).sqrt() * noise)
        position = state.position + velocity
        lp, grad, noise_variance = self.evaluate(position, step_index)
        return SGHMCState(position, velocity, lp, grad, noise_variance), None

    def position(self, state: SGHMCState) -> torch.Tensor:
        return state.position

    def reevaluate(self, state: SGHMCState) -> SGHMCState:
        lp, grad, noise = self.evaluate(state.position, -1)
        return state._replace(log_density=lp, grad=grad, noise_variance=noise)

    def stats(self, state: SGHMCState, info: None) -> dict[str, torch.Tensor]:
        return {"lp": state.log_density,
                "step_size": state.log_density.new_full(state.log_density.shape,
                                                        math.sqrt(self.learning_rate))}


@dataclass
class SGHMCOptions:
    """Options of ``--method sghmc`` (full-batch gradients of the model's log density).

    ``learning_rate`` is ``eta = step^2``; ``friction`` is ``alpha``; ``thin`` SGHMC
    steps per kept draw; ``resample_every`` redraws momentum every that many steps (0: never).
    """

    learning_rate: float = 1e-3
    friction: float = 0.1
    thin: int = 10
    resample_every: int = 0
    init_radius: float = 2.0


class _Thinned:
    """``thin`` kernel steps per driver step (the kernel protocol unchanged)."""

    def __init__(self, kernel: SGHMCKernel, thin: int):
        self.kernel, self.thin = kernel, thin

    def init(self, position, log_density, num_warmup):
        return self.kernel.init(position, log_density, num_warmup)

    def step(self, rng, step_index, state, warmup):
        for inner in range(self.thin):
            state, info = self.kernel.step(rng, step_index * self.thin + inner, state, warmup)
        return state, info

    def position(self, state):
        return self.kernel.position(state)

    def stats(self, state, info):
        return self.kernel.stats(state, info)


def run_sghmc(spec: ModelSpec, options: SGHMCOptions, settings: RunSettings) -> Samples:
    """``--method sghmc``: every chain batched, exact gradients from the model."""
    if options.thin < 1:
        raise BayesdlError(f"sghmc: thin must be >= 1, got {options.thin}")
    started = time.perf_counter()
    potential = BatchedPotential(spec.model, spec.data)
    rng = ChainRNG(settings.chain_seeds(), device=settings.device)
    position, log_density = potential.initial_positions(rng, radius=options.init_radius,
                                                        dtype=settings.dtype)
    kernel = SGHMCKernel(lambda x, _step: potential.log_density_and_grad(x), options.learning_rate,
                         options.friction, resample_every=options.resample_every)
    flat, stats, _ = run_kernel(_Thinned(kernel, options.thin), rng, position, log_density,
                                settings.warmup, settings.draws, progress=settings.progress,
                                description=f"sghmc ({settings.chains} chains)",
                                checkpoint=settings.checkpoint)
    return Samples(draws=potential.constrain(flat), stats=stats,
                   info={"method": "sghmc", "seed": settings.seed,
                         "chain_seeds": settings.chain_seeds(),
                         "sampling_time_s": time.perf_counter() - started})
