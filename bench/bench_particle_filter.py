"""Bootstrap particle filter: our batched torch filter against a plain NumPy one.

    python bench/bench_particle_filter.py [--particles 1000] [--steps 100] [--runs 1 32]

Model: 2-D linear-Gaussian state, 1-D observation (the test's model). Both filters
propagate, weight, compute filtering means and resample systematically when the ESS
drops below N/2. The NumPy filter is vectorised over particles and loops over runs
(what a user writes by hand); ours runs all runs as one tensor. Reported: particle
steps per second (runs x particles x steps / seconds) and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bayesdl.inference.particle_filter import StateSpaceModel, bootstrap_particle_filter

A = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q = np.array([[0.3, 0.05], [0.05, 0.2]])
H = np.array([[1.0, 0.5]])
R = 0.5


def simulate(steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=2)
    ys = []
    for t in range(steps):
        if t > 0:
            x = A @ x + rng.multivariate_normal(np.zeros(2), Q)
        ys.append(H @ x + np.sqrt(R) * rng.normal(size=1))
    return np.array(ys)


def numpy_filter(ys: np.ndarray, n: int, rng: np.random.Generator) -> float:
    chol = np.linalg.cholesky(Q)
    x = rng.normal(size=(n, 2))
    log_w = np.full(n, -np.log(n))
    log_z = 0.0
    for t, y in enumerate(ys):
        if t > 0:
            x = x @ A.T + rng.normal(size=(n, 2)) @ chol.T
        log_g = -0.5 * ((y[0] - x @ H[0]) ** 2 / R + np.log(2 * np.pi * R))
        joint = log_w + log_g
        top = joint.max()
        increment = top + np.log(np.exp(joint - top).sum())
        log_z += increment
        log_w = joint - increment
        w = np.exp(log_w)
        _ = w @ x  # filtering mean
        if 1.0 / (w**2).sum() < n / 2:
            cdf = np.cumsum(w)
            idx = np.searchsorted(cdf / cdf[-1], (np.arange(n) + rng.uniform()) / n).clip(max=n - 1)
            x, log_w = x[idx], np.full(n, -np.log(n))
    return log_z


def torch_model() -> StateSpaceModel:
    a, h = torch.tensor(A), torch.tensor(H[0])
    chol = torch.linalg.cholesky(torch.tensor(Q))
    return StateSpaceModel(
        initial=lambda: torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                               scale_tril=torch.eye(2, dtype=torch.float64)),
        transition=lambda x, t: torch.distributions.MultivariateNormal(x @ a.T, scale_tril=chol),
        observation=lambda x, t: torch.distributions.Normal(x @ h, R**0.5),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ys = simulate(args.steps)
    yt = torch.tensor(ys)
    print("| runs | particles | steps | numpy (particle-steps/s) | bayesdl (particle-steps/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for runs in args.runs:
        work = runs * args.particles * args.steps
        rng = np.random.default_rng(0)
        numpy_filter(ys, args.particles, rng)  # warm-up
        started = time.perf_counter()
        for _ in range(runs):
            numpy_filter(ys, args.particles, rng)
        numpy_rate = work / (time.perf_counter() - started)
        bootstrap_particle_filter(torch_model(), yt, args.particles, runs, seed=0)  # warm-up
        started = time.perf_counter()
        bootstrap_particle_filter(torch_model(), yt, args.particles, runs, seed=1)
        ours = work / (time.perf_counter() - started)
        print(f"| {runs} | {args.particles} | {args.steps} | {numpy_rate:.3g} | {ours:.3g} | "
              f"{ours / numpy_rate:.2f} |")


if __name__ == "__main__":
    main()
