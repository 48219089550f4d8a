"""How the cost of one batched MH iteration grows with the number of chains.

    python bench/bench_chain_scaling.py [--device cuda]

For 1 to 10,000 chains on eight schools: milliseconds per iteration (all chains),
microseconds per chain-iteration, and the speed-up over running the chains one at
a time (C x the 1-chain cost), with peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import torch

warnings.filterwarnings("ignore")

from bayesdl.inference.counter_rng import ChainRNG  # noqa: E402
from bayesdl.inference.driver import run_kernel  # noqa: E402
from bayesdl.inference.potential import BatchedPotential  # noqa: E402
from bayesdl.inference.random_walk import RandomWalkKernel  # noqa: E402
from bayesdl.model_source import load_model_spec  # noqa: E402


def time_per_iteration(chains: int, device: torch.device, iterations: int = 200) -> float:
    """Seconds per iteration of ``chains`` batched MH chains (after a short warm start)."""
    torch.set_default_dtype(torch.float64)
    spec = load_model_spec("eight_schools", None, {}, device, torch.float64)
    potential = BatchedPotential(spec.model, spec.data)
    rng = ChainRNG(list(range(chains)), device=device)
    position, log_density = potential.initial_positions(rng)
    kernel = RandomWalkKernel(potential.log_density)
    run_kernel(kernel, rng, position, log_density, 20, 10, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run_kernel(kernel, rng, position, log_density, iterations // 2, iterations // 2, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    ns = parser.parse_args()
    device = torch.device(ns.device)
    base = None
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| chains | ms / iteration | us / chain-iteration | speed-up vs one at a time |")
    print("|---|---|---|---|")
    for chains in (1, 10, 100, 1000, 10000):
        seconds = time_per_iteration(chains, device)
        base = base or seconds
        print(f"| {chains} | {seconds * 1e3:.2f} | {seconds / chains * 1e6:.1f} | "
              f"{base * chains / seconds:.0f}x |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = (f", GPU max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
           if device.type == "cuda" else "")
    print(f"\npeak RSS {peak:.0f} MiB{gpu}")


if __name__ == "__main__":
    main()
