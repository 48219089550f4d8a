"""Our batched kernels inside ``pyro.infer.MCMC``: an ``MCMCKernel`` adapter.

``pyro.infer.MCMC`` drives one chain per kernel object and keeps the state on the
kernel (its protocol), so the adapter holds a one-chain batched state and advances
it with the same pure step the batched driver uses. Its random numbers are keyed
from Pyro's global RNG at ``setup``, so ``pyro.set_rng_seed`` makes runs repeat.

    from pyro.infer import MCMC
    from bayesdl.inference import RandomWalkMH
    MCMC(RandomWalkMH(model), num_samples=1000, warmup_steps=1000).run(y=y)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.kernel import BatchedKernel
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.random_walk import RandomWalkKernel


class PyroKernelAdapter(MCMCKernel):
    """Runs ``make_kernel(potential)`` as a Pyro ``MCMCKernel`` (one chain)."""

    def __init__(self, model: Callable[..., Any],
                 make_kernel: Callable[[BatchedPotential], BatchedKernel],
                 init_radius: float = 2.0):
        self.model = model
        self.make_kernel = make_kernel
        self.init_radius = init_radius
        self.transforms = None
        self._initial_params: dict[str, torch.Tensor] | None = None
        self._accepted = 0.0
        self._steps = 0

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        if args:
            raise ValueError("pass the model's data to MCMC.run as keyword arguments")
        self.potential = BatchedPotential(self.model, kwargs)
        self.transforms = self.potential.transforms
        seed = int(torch.randint(0, 2**62, ()))  # Pyro's global RNG decides our key
        self._rng = ChainRNG([seed])
        if self._initial_params is None:
            position, log_density = self.potential.initial_positions(self._rng, self.init_radius)
        else:
            position = self.potential.ravel({k: v[None] for k, v in self._initial_params.items()})
            log_density = self.potential.log_density(position)
        self._kernel = self.make_kernel(self.potential)
        self._state = self._kernel.init(position, log_density, warmup_steps)
        self._warmup_steps = warmup_steps
        self._t = 0
        self._accepted, self._steps = 0.0, 0
        self._initial_params = self._unravel_one(position)

    def _unravel_one(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.potential.unravel(flat).items()}

    @property
    def initial_params(self) -> dict[str, torch.Tensor]:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, torch.Tensor]) -> None:
        self._initial_params = params

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        warmup = self._t < self._warmup_steps
        with torch.no_grad():
            self._state, info = self._kernel.step(self._rng, self._t, self._state, warmup)
        self._t += 1
        if not warmup:
            self._steps += 1
            self._accepted += float(info.acceptance_rate[0])
        return self._unravel_one(self._kernel.position(self._state))

    def logging(self) -> dict[str, str]:
        return {"acc. prob": f"{self._accepted / max(self._steps, 1):.3f}"}

    def diagnostics(self) -> dict[str, float]:
        return {"acceptance rate": self._accepted / max(self._steps, 1)}


class RandomWalkMH(PyroKernelAdapter):
    """Adaptive random-walk Metropolis-Hastings as a ``pyro.infer.MCMC`` kernel
    (``adapt="full"``: Haario's adaptive full covariance)."""

    def __init__(self, model: Callable[..., Any], target_accept: float | None = None,
                 init_step_size: float | None = None, init_radius: float = 2.0,
                 adapt: str = "diag"):
        super().__init__(
            model,
            lambda potential: RandomWalkKernel(potential.log_density, target_accept,
                                               init_step_size, adapt=adapt),
            init_radius,
        )
