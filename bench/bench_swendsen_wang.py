"""Swendsen-Wang vs checkerboard single-site Metropolis on the 2-D Ising model at T_c.

    python bench/bench_swendsen_wang.py                   # L = 16, 32, 64, 128 (minutes)
    python bench/bench_swendsen_wang.py --sizes 16 32 --sweeps 2000 --quick
    python bench/bench_swendsen_wang.py --device cuda

For each L, in one run: the integrated autocorrelation time of the energy (in sweeps,
from ArviZ's ESS over ``--chains`` chains after a warm-up of ``--warmup`` sweeps) and
effective samples per second, for SW and for vectorised checkerboard Metropolis (one
sweep = a Metropolis update of every black site, then every white site; our own
batched implementation, the usual baseline); then sweeps per second of SW with 1 and
64 chains. Prints Markdown tables. SW's dynamic exponent is about 0.2-0.3 and
Metropolis' about 2.1 (Swendsen & Wang 1987; Nightingale & Blote 1996), so SW's
advantage should grow with L.
"""

from __future__ import annotations

import argparse
import platform
import time

import arviz as az
import torch

from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.potts import ISING_CRITICAL_T, PottsGraph, ising_beta
from bayesdl.inference.swendsen_wang import SwendsenWangKernel

METROPOLIS_STREAM = 60_001


def energy_per_site(labels: torch.Tensor, graph: PottsGraph) -> torch.Tensor:
    equal = (labels[:, graph.edges[:, 0]] == labels[:, graph.edges[:, 1]]).sum(-1)
    return -(2.0 * equal - graph.num_edges) / graph.num_sites


def metropolis_sweep(rng: ChainRNG, step: int, labels: torch.Tensor, graph: PottsGraph,
                     beta: float) -> torch.Tensor:
    """Checkerboard Metropolis for q = 2: flip proposals for all sites of one colour."""
    edges = graph.edges
    degree = torch.bincount(edges.reshape(-1), minlength=graph.num_sites).double()
    for colour in range(graph.num_colours):
        equal = torch.zeros_like(labels, dtype=torch.float64)
        same = (labels[:, edges[:, 0]] == labels[:, edges[:, 1]]).double()
        equal.index_add_(1, edges[:, 0], same)
        equal.index_add_(1, edges[:, 1], same)
        # flipping a site turns its equal neighbours into unequal ones and back
        log_ratio = beta * (degree - 2 * equal)
        u = rng.uniform(step, METROPOLIS_STREAM + colour, (graph.num_sites,))
        flip = (torch.log(u) < log_ratio) & (graph.colours == colour)
        labels = torch.where(flip, 1 - labels, labels)
    return labels


def run(kind: str, L: int, chains: int, warmup: int, sweeps: int, device: str) -> dict:
    graph = PottsGraph.lattice(L, L, device=device)
    beta = ising_beta(ISING_CRITICAL_T)
    rng = ChainRNG(list(range(chains)), device=device)
    labels = (rng.uniform(0, 7, (graph.num_sites,)) * 2).long()
    kernel = SwendsenWangKernel(2, graph, torch.tensor(beta, dtype=torch.float64, device=device))
    energies = torch.empty(sweeps, chains, dtype=torch.float64, device=device)

    def sweep(step: int, labels: torch.Tensor) -> torch.Tensor:
        if kind == "sw":
            return kernel.update(rng, step, labels)[0]
        return metropolis_sweep(rng, step, labels, graph, beta)

    for step in range(warmup):
        labels = sweep(step, labels)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(sweeps):
        labels = sweep(warmup + i, labels)
        energies[i] = energy_per_site(labels, graph)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    e = energies.T.cpu().numpy()
    ess = float(az.ess(e, method="bulk"))
    return {"kind": kind, "L": L, "chains": chains, "sweeps": sweeps, "seconds": seconds,
            "tau": chains * sweeps / ess, "ess": ess, "ess_per_s": ess / seconds,
            "sweeps_per_s": sweeps / seconds, "energy": float(e.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1000,
                        help="warm-up sweeps (default 1000; Metropolis gets at least L^2, "
                             "its equilibration time at T_c grows about as L^2)")
    parser.add_argument("--sweeps", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="sizes 16 32, 200 + 1000 sweeps")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.warmup, args.sweeps = [16, 32], 200, 1000
    torch.set_default_dtype(torch.float64)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()}, T = T_c = {ISING_CRITICAL_T:.4f}, {args.chains} chains, "
          f"{args.warmup} warm-up + {args.sweeps} sweeps\n")
    print("| L | sampler | N / ESS(E), sweeps (= 1 + 2 sum rho) | ESS/s | sweeps/s | mean E/site "
          "| SW ESS/s over Metropolis |")
    print("|---|---|---|---|---|---|---|")
    for L in args.sizes:
        warmups = {"sw": args.warmup, "metropolis": max(args.warmup, 0 if args.quick else L * L)}
        rows = {k: run(k, L, args.chains, warmups[k], args.sweeps, args.device)
                for k in ("sw", "metropolis")}
        ratio = rows["sw"]["ess_per_s"] / rows["metropolis"]["ess_per_s"]
        for kind, label in (("sw", "Swendsen-Wang"), ("metropolis", "checkerboard Metropolis")):
            r = rows[kind]
            print(f"| {L} | {label} | {r['tau']:.1f} | {r['ess_per_s']:.1f} | "
                  f"{r['sweeps_per_s'] * args.chains:.0f} (x{args.chains} chains) | "
                  f"{r['energy']:.4f} | {ratio:.1f}x |" if kind == "sw" else
                  f"| {L} | {label} | {r['tau']:.1f} | {r['ess_per_s']:.1f} | "
                  f"{r['sweeps_per_s'] * args.chains:.0f} (x{args.chains} chains) | "
                  f"{r['energy']:.4f} | |")
    print("\n| L | SW sweeps/s, 1 chain | SW chain-sweeps/s, 64 chains |")
    print("|---|---|---|")
    for L in args.sizes:
        one = run("sw", L, 1, 10, max(args.sweeps // 20, 50), args.device)
        many = run("sw", L, 64, 10, max(args.sweeps // 50, 20), args.device)
        print(f"| {L} | {one['sweeps_per_s']:.0f} | {many['sweeps_per_s'] * 64:.0f} |")


if __name__ == "__main__":
    main()
