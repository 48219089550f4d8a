"""The batched kernel protocol shared by our own MCMC kernels.

A kernel holds configuration only; everything that changes lives in its state, a
NamedTuple of tensors whose leading dimension is the chain. ``step`` is a function of
(rng, step index, state) and adapts when ``warmup`` is true. The driver
(:mod:`bayesdl.inference.driver`) runs any kernel that follows this protocol, and
:mod:`bayesdl.inference.pyro_kernel` runs it inside ``pyro.infer.MCMC``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from bayesdl.inference.counter_rng import ChainRNG


class BatchedKernel(Protocol):
    """What the driver needs from a kernel."""

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> Any:
        """State at ``position [C, D]`` whose log density is ``log_density [C]``."""

    def step(self, rng: ChainRNG, step_index: int, state: Any, warmup: bool) -> tuple[Any, Any]:
        """Advance every chain once; adapt tuning parameters when ``warmup``."""

    def position(self, state: Any) -> torch.Tensor:
        """Flat unconstrained positions ``[C, D]``."""

    def stats(self, state: Any, info: Any) -> dict[str, torch.Tensor]:
        """Per-chain statistics of the last step, under ArviZ's names (``[C]`` each)."""

    def reevaluate(self, state: Any) -> Any:
        """Optional: the state with its cached log density (and gradient) recomputed at
        the current position under this kernel's target. Metropolis-within-Gibbs
        (:mod:`bayesdl.inference.composition`) calls it after other sites changed the target."""
