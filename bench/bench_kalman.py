"""Kalman filtering of a long series: sequential vs parallel scan vs statsmodels.

    python bench/bench_kalman.py --steps 100000

Local level model (d = p = 1) and a 2-state, 2-observation model, float64, CPU, one
thread: log-likelihood (and filtered moments) of ``--steps`` observations by
``kalman_filter`` (a Python loop over time), ``parallel_kalman_filter`` (associative
scan, log2(T) vectorised passes) and statsmodels' Cython filter
(``ssm.loglike``). The log-likelihoods are checked equal. The sequential filter costs
the same per step at any T; it is timed on ``--max-sequential`` steps and scaled.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import statsmodels.api as sm
import torch

from bayesdl.models.kalman import kalman_filter, parallel_kalman_filter


def model(d: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    F = np.eye(d) if d == 1 else np.array([[0.9, 0.2], [-0.2, 0.9]])
    H, Q, R = np.eye(d), 0.3 * np.eye(d), 0.5 * np.eye(d)
    y = np.cumsum(rng.normal(size=(steps, d)), 0) if d == 1 else rng.normal(size=(steps, d))
    return y, F, H, Q, R, np.zeros(d), 10.0 * np.eye(d)


def timed(function) -> tuple[float, float]:
    """Seconds of the second of two calls (the first pays for one-off set-up), and its value."""
    function()
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def bench(d: int, steps: int, max_sequential: int) -> None:
    """Time the three filters on one model and print a row each."""
    arrays = model(d, steps)
    y, F, H, Q, R, m0, P0 = (torch.as_tensor(a) for a in arrays)
    reference = sm.tsa.statespace.MLEModel(arrays[0], k_states=d)
    reference["design"], reference["obs_cov"], reference["transition"] = arrays[2], arrays[4], arrays[1]
    reference["selection"], reference["state_cov"] = np.eye(d), arrays[3]
    reference.ssm.initialize_known(arrays[5], arrays[6])
    rows = [
        ("statsmodels ssm.loglike (Cython)", timed(lambda: float(reference.ssm.loglike()))),
        ("bayesdl parallel_kalman_filter (scan)",
         timed(lambda: float(parallel_kalman_filter(y, F, H, Q, R, m0, P0).log_likelihood))),
    ]
    base, expected = rows[0][1]
    for name, (_, value) in rows:
        assert abs(value - expected) < 1e-6 * abs(expected), (name, value, expected)
    # the Python loop over time: timed on the first max_sequential steps, scaled linearly
    short = min(steps, max_sequential)
    seconds, value = timed(lambda: float(kalman_filter(y[:short], F, H, Q, R, m0, P0).log_likelihood))
    check = float(parallel_kalman_filter(y[:short], F, H, Q, R, m0, P0).log_likelihood)
    assert abs(value - check) < 1e-6 * abs(check)
    label = "" if short == steps else f" (x{steps / short:g} of {short:,} steps)"
    rows.append((f"bayesdl kalman_filter (sequential){label}", (seconds * steps / short, value)))
    for name, (seconds, _) in rows:
        print(f"d=p={d}  {name:<58s} {seconds:8.3f} s  {seconds / base:7.1f}x statsmodels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--max-sequential", type=int, default=10_000,
                        help="time the sequential filter on at most this many steps and scale")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"T = {args.steps:,}, float64, CPU, one thread")
    for d in (1, 2):
        bench(d, args.steps, args.max_sequential)


if __name__ == "__main__":
    main()
