"""HMC on a latent prior p(z): persistent batched chains, one chain per latent draw.

The Bayesian GAN (issue 6) marginalises z by Monte Carlo over draws from p(z). For the
mixture priors of :mod:`bayesdl.models.latent_priors` those draws can also come from
Hamiltonian Monte Carlo on log p(z) (its ``log_prob`` is differentiable in z), which is
what a prior without an ancestral sampler would need:

    chains = LatentHMC(prior, num_chains=64, num_warmup=100, seed=0)
    z = chains.sample()        # [64, dim]; the first call runs the warm-up
    z = chains.sample(2)       # two more transitions of every chain, no re-warming

Each of the ``num_chains`` draws is one chain of our batched kernel
(:class:`~bayesdl.inference.hmc.HMCKernel`, or :class:`~bayesdl.inference.nuts.NUTSKernel`
with ``kernel="nuts"``): all chains move together, one potential call (log p(z) and its
gradient for every chain) per leapfrog step. The chains persist between calls, so a
trainer keeps a running set of z's and advances them a few transitions per iteration;
the warm-up (Stan's, per chain: step size by dual averaging, diagonal metric) runs once.
If the prior's parameters change between calls (a learned mixture), the cached log
densities are recomputed before the next transition, so the chains target the current p(z).

Chains start at ``init``: ``"prior"`` (ancestral draws, so the chains start in the
stationary distribution), ``"normal"`` (N(0, I) draws, to check that HMC finds p(z) on
its own) or a tensor ``[num_chains, dim]``. Random numbers are keyed per chain
(:class:`~bayesdl.inference.counter_rng.ChainRNG`), so chain c does not depend on how
many chains run beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.hmc import HMCKernel
from bayesdl.inference.nuts import NUTSKernel
from bayesdl.models.latent_priors import LatentPrior

__all__ = ["LatentHMC", "KERNELS", "INITS"]

KERNELS = ("hmc", "nuts")
INITS = ("prior", "normal")
_INIT_STREAM = 31


class LatentHMC:
    """``num_chains`` persistent HMC (or NUTS) chains on ``prior``'s p(z); see the module docstring.

    ``trajectory_length`` is HMC's integration time in units of the adapted metric (about
    a quarter period of a unit Gaussian by default, where successive draws decorrelate
    most); ``steps_per_call`` is the default number of transitions per :meth:`sample`.
    """

    def __init__(self, prior: LatentPrior, num_chains: int, num_warmup: int = 100,
                 steps_per_call: int = 1, kernel: str = "hmc", init: str | torch.Tensor = "prior",
                 trajectory_length: float = 1.5, target_accept: float = 0.8,
                 max_tree_depth: int = 6, seed: int = 0):
        if num_chains < 1 or num_warmup < 0 or steps_per_call < 1:
            raise BayesdlError(f"latent hmc: need num_chains >= 1, num_warmup >= 0 and "
                               f"steps_per_call >= 1, got {num_chains}, {num_warmup}, {steps_per_call}")
        if kernel not in KERNELS:
            raise BayesdlError(f"latent hmc: unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if isinstance(init, str) and init not in INITS:
            raise BayesdlError(f"latent hmc: unknown init {init!r}; choose one of {', '.join(INITS)} "
                               f"or give a [num_chains, dim] tensor")
        self.prior, self.num_chains, self.num_warmup = prior, num_chains, num_warmup
        self.steps_per_call = steps_per_call
        self.rng = ChainRNG([seed * 1_000_003 + c for c in range(num_chains)], prior._device())
        if kernel == "hmc":
            self.kernel: Any = HMCKernel(self._potential, trajectory_length=trajectory_length,
                                         target_accept=target_accept)
        else:
            self.kernel = NUTSKernel(self._potential, max_tree_depth=max_tree_depth,
                                     target_accept=target_accept)
        start = self._start(init)
        self.state = self.kernel.init(start, self._potential(start)[0], num_warmup)
        self.step_index = 0  # transitions taken so far, warm-up included (keys the random numbers)
        self.last_info: Any = None

    def _start(self, init: str | torch.Tensor) -> torch.Tensor:
        dtype, dim = self.prior._dtype(), self.prior.dim
        if isinstance(init, torch.Tensor):
            if init.shape != (self.num_chains, dim) or not bool(torch.isfinite(init).all()):
                raise BayesdlError(f"latent hmc: init must be a finite [{self.num_chains}, {dim}] "
                                   f"tensor, got {tuple(init.shape)}")
            return init.detach().to(dtype=dtype, device=self.rng.device).clone()
        if init == "normal":
            return self.rng.normal(0, _INIT_STREAM, (dim,), dtype=dtype)
        with torch.no_grad():
            return self.prior.sample((self.num_chains,)).to(dtype)

    def _potential(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(z) ``[C]`` and its gradient in z ``[C, dim]`` for all chains at once.

        A chain whose trial point overflowed (a huge trial step in warm-up) gets log density
        -inf there, which the kernels reject, instead of an error from the distribution."""
        finite = torch.isfinite(z).all(-1)
        with torch.enable_grad():
            z = torch.where(finite[:, None], z, torch.zeros_like(z)).detach().requires_grad_()
            log_density = self.prior.log_prob(z)
            grad, = torch.autograd.grad(log_density.sum(), z)
        log_density = torch.where(finite, log_density.detach(), -torch.inf)
        return log_density, torch.where(finite[:, None], grad, torch.zeros_like(grad))

    @property
    def warmed_up(self) -> bool:
        return self.step_index >= self.num_warmup

    @property
    def position(self) -> torch.Tensor:
        """The chains' current z ``[num_chains, dim]``."""
        return self.kernel.position(self.state)

    def sample(self, num_steps: int | None = None) -> torch.Tensor:
        """Advance every chain ``num_steps`` transitions (default ``steps_per_call``; the first
        call runs the warm-up before them) and return their positions ``[num_chains, dim]``."""
        steps = self.steps_per_call if num_steps is None else num_steps
        if steps < 0:
            raise BayesdlError(f"latent hmc: num_steps must be >= 0, got {steps}")
        self.state = self.kernel.reevaluate(self.state)  # p(z)'s parameters may have changed
        with torch.no_grad():
            target = max(self.step_index, self.num_warmup) + steps
            while self.step_index < target:
                warmup = self.step_index < self.num_warmup
                self.state, self.last_info = self.kernel.step(self.rng, self.step_index, self.state,
                                                              warmup)
                self.step_index += 1
        return self.position.clone()
