"""The loop that runs a batched kernel: warm-up, then draws stored in place.

The loop is over iterations only; chains are a tensor dimension and nothing reads a
value back to the host until the end, so a CUDA run never waits on the CPU.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.kernel import BatchedKernel


def run_kernel(
    kernel: BatchedKernel,
    rng: ChainRNG,
    position: torch.Tensor,
    log_density: torch.Tensor,
    num_warmup: int,
    num_draws: int,
    progress: bool = True,
    description: str = "sampling",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], object]:
    """Run ``num_warmup + num_draws`` steps from ``position [C, D]``.

    Returns ``(draws [C, num_draws, D], stats {name: [C, num_draws]}, final state)``.
    """
    chains, dim = position.shape
    state = kernel.init(position, log_density, num_warmup)
    draws = position.new_empty((num_draws, chains, dim))
    stats: dict[str, torch.Tensor] = {}
    bar = tqdm(total=num_warmup + num_draws, desc=description, disable=not progress,
               leave=False, dynamic_ncols=True, mininterval=0.5)
    with bar, torch.no_grad():
        for step_index in range(num_warmup + num_draws):
            warmup = step_index < num_warmup
            state, info = kernel.step(rng, step_index, state, warmup)
            if not warmup:
                i = step_index - num_warmup
                draws[i] = kernel.position(state)
                for name, value in kernel.stats(state, info).items():
                    if name not in stats:
                        stats[name] = value.new_empty((num_draws, chains))
                    stats[name][i] = value
            bar.update(1)
    return (
        draws.transpose(0, 1),
        {name: value.transpose(0, 1) for name, value in stats.items()},
        state,
    )
