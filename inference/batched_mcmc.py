"""Run one of our batched kernels on a model: potential, starts, driver, constrain.

Every custom kernel (mh now; slice, Gibbs, ... later) goes through this one path, so
they share the per-chain seeding, the start rule and the output layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.kernel import BatchedKernel
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings


def run_batched_mcmc(
    spec: ModelSpec,
    settings: RunSettings,
    make_kernel: Callable[[BatchedPotential], BatchedKernel],
    method: str,
    init_radius: float = 2.0,
    evaluation: str = "auto",
) -> Samples:
    """Sample ``spec`` with the kernel ``make_kernel(potential)``, all chains at once.

    ``evaluation`` is how the potential is evaluated (see ``BatchedPotential.accelerate``).
    """
    if not 0 <= init_radius < float("inf"):
        raise BayesdlError(f"init_radius must be a number >= 0, got {init_radius}")
    started = time.perf_counter()
    potential = BatchedPotential(spec.model, spec.data)
    rng = ChainRNG(settings.chain_seeds(), device=settings.device)
    # trace the model once for [chains, dim] positions (every kernel call has that shape)
    example = torch.zeros(settings.chains, potential.dim, dtype=settings.dtype,
                          device=settings.device)
    potential.accelerate(example, evaluation)
    position, log_density = potential.initial_positions(rng, radius=init_radius,
                                                        dtype=settings.dtype)
    kernel = make_kernel(potential)
    flat_draws, stats, _ = run_kernel(
        kernel, rng, position, log_density, settings.warmup, settings.draws,
        progress=settings.progress, description=f"{method} ({settings.chains} chains)",
        checkpoint=settings.checkpoint,
    )
    draws = potential.constrain(flat_draws)
    return Samples(
        draws=draws,
        stats=stats,
        info={"method": method, "seed": settings.seed, "chain_seeds": settings.chain_seeds(),
              "sampling_time_s": time.perf_counter() - started},
    )
