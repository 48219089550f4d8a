"""The loop that runs a batched kernel: warm-up, then draws stored in place.

The loop is over iterations only; chains are a tensor dimension and nothing reads a
value back to the host until the end, so a CUDA run never waits on the CPU.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bayesdl.checkpoint import Checkpoint, check_encodable
from bayesdl.device import collector_frozen
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
    checkpoint: Checkpoint | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], object]:
    """Run ``num_warmup + num_draws`` steps from ``position [C, D]``.

    With ``checkpoint`` (:class:`bayesdl.checkpoint.Checkpoint`) the run starts from its
    newest flush (or from the final state of an ``init_from`` run, warm-up skipped),
    flushes draws and state every ``checkpoint.every`` iterations, and hands it the final
    state. Returns ``(draws [C, num_draws, D], stats {name: [C, num_draws]}, final state)``.
    """
    chains, dim = position.shape
    total = num_warmup + num_draws
    # the bar starts before the kernel's set-up, which can take seconds (compiling)
    bar = tqdm(total=total, desc=f"{description}: preparing", disable=not progress,
               leave=False, dynamic_ncols=True, mininterval=0.5)
    try:
        state = kernel.init(position, log_density, num_warmup)
    except BaseException:
        bar.close()
        raise
    bar.set_description(description, refresh=False)
    draws = position.new_empty((num_draws, chains, dim))
    stats: dict[str, torch.Tensor] = {}
    first = 0
    if checkpoint is not None:
        check_encodable(state)
        restart = checkpoint.restore(state, num_warmup, num_draws)
        if restart is not None:
            state, num_warmup, first = restart.state, restart.num_warmup, restart.steps_done
            if restart.draws is not None:
                done = restart.draws.shape[1]
                draws[:done] = restart.draws.transpose(0, 1)
                for name, value in restart.stats.items():
                    stats[name] = value.new_empty((num_draws, chains))
                    stats[name][:done] = value.transpose(0, 1)
    flushed = first
    total = num_warmup + num_draws  # a restart may have changed the warm-up
    bar.reset(total=total)
    bar.update(first)
    with bar, torch.no_grad(), collector_frozen():
        for step_index in range(first, total):
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
            if checkpoint is not None and step_index + 1 < total and checkpoint.due(step_index + 1):
                lo, hi = max(flushed - num_warmup, 0), max(step_index + 1 - num_warmup, 0)
                checkpoint.flush(step_index + 1, num_warmup, num_draws, state,
                                 draws[lo:hi].transpose(0, 1),
                                 {k: v[lo:hi].transpose(0, 1) for k, v in stats.items()}, lo)
                flushed = step_index + 1
    if checkpoint is not None:
        checkpoint.finish(state, total)
    return (
        draws.transpose(0, 1),
        {name: value.transpose(0, 1) for name, value in stats.items()},
        state,
    )
