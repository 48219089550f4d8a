"""GP log marginal likelihood + gradient, and prediction: bayesdl vs scikit-learn vs Pyro.

    python bench/bench_gp.py --n 1000 2000 4000 --repeats 3

Matern-5/2 kernel, float64, CPU, one process. Rows per n (median seconds of
``--repeats`` calls):

- ``bayesdl``: models/gp.py, gradient in closed form (cholesky_inverse) -- the floor;
- ``torch autograd``: the same log density differentiated through torch.linalg.cholesky;
- ``scikit-learn``: GaussianProcessRegressor.log_marginal_likelihood(theta, eval_gradient=True);
- ``pyro.contrib.gp``: GPRegression's model log density + backward.

Prediction: mean and full covariance at 1,000 new points, from the data and fixed
hyper-parameters (bayesdl ``predict`` vs scikit-learn ``fit`` + ``predict(return_cov=True)``;
both factorise the n x n matrix once). The values are checked equal before timing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import pyro
import pyro.contrib.gp as pyro_gp
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from bayesdl.models.gp import gp_log_marginal_likelihood, noisy_kernel_matrix, predict

LENGTHSCALE, VARIANCE, NOISE = 0.7, 1.3, 0.05


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last value."""
    function()
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def bench(n: int, repeats: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, size=(n, 2))
    y = np.sin(X[:, 0]) + np.cos(X[:, 1]) + 0.2 * rng.normal(size=n)
    X_new = rng.uniform(-3, 3, size=(1000, 2))
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    rows = []

    def ours():
        log_params = torch.tensor([math.log(LENGTHSCALE), math.log(VARIANCE), math.log(NOISE)],
                                  dtype=torch.float64, requires_grad=True)
        params = dict(zip(("lengthscale", "variance", "noise"), log_params.exp(), strict=True))
        value = gp_log_marginal_likelihood("matern52", Xt, yt, params)
        value.backward()
        return float(value.detach()), log_params.grad.clone()

    def autograd():
        log_params = torch.tensor([math.log(LENGTHSCALE), math.log(VARIANCE), math.log(NOISE)],
                                  dtype=torch.float64, requires_grad=True)
        names = ("lengthscale", "variance", "noise")
        K = noisy_kernel_matrix("matern52", Xt, dict(zip(names, log_params.exp(), strict=True)))
        value = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64),
                                                       scale_tril=torch.linalg.cholesky(K)).log_prob(yt)
        value.backward()
        return float(value.detach()), log_params.grad.clone()

    kernel = ConstantKernel(VARIANCE) * Matern(LENGTHSCALE, nu=2.5) + WhiteKernel(NOISE)
    sk = GaussianProcessRegressor(kernel, optimizer=None).fit(X, y)

    def sklearn():
        value, gradient = sk.log_marginal_likelihood(sk.kernel_.theta, eval_gradient=True)
        return value, gradient

    pyro.clear_param_store()
    pyro_kernel = pyro_gp.kernels.Matern52(input_dim=2, variance=torch.tensor(VARIANCE, dtype=torch.float64),
                                           lengthscale=torch.tensor(LENGTHSCALE, dtype=torch.float64))
    gpr = pyro_gp.models.GPRegression(Xt, yt, pyro_kernel, noise=torch.tensor(NOISE, dtype=torch.float64),
                                      jitter=0.0).double()

    def pyro_contrib():
        gpr.zero_grad()
        value = -pyro.infer.Trace_ELBO().differentiable_loss(gpr.model, gpr.guide)
        value.backward()
        return float(value.detach()), None

    reference = None
    contenders = [("bayesdl (closed-form gradient)", ours), ("torch autograd through Cholesky", autograd),
                  ("scikit-learn", sklearn), ("pyro.contrib.gp GPRegression", pyro_contrib)]
    for name, function in contenders:
        seconds, (value, _) = timed(function, repeats)
        reference = value if reference is None else reference
        assert abs(value - reference) < 1e-6 * abs(reference), (name, value, reference)
        rows.append((f"log ML + gradient, {name}", seconds))

    params = {"lengthscale": LENGTHSCALE, "variance": VARIANCE, "noise": NOISE}
    X_new_t = torch.as_tensor(X_new)
    seconds, ours_prediction = timed(lambda: predict("matern52", Xt, yt, X_new_t, params), repeats)
    rows.append(("predict (mean + full cov, 1000 points), bayesdl", seconds))
    fixed = ConstantKernel(VARIANCE, "fixed") * Matern(LENGTHSCALE, "fixed", nu=2.5)
    sk_free = GaussianProcessRegressor(fixed, alpha=NOISE, optimizer=None)
    seconds, (mean, _) = timed(lambda: sk_free.fit(X, y).predict(X_new, return_cov=True), repeats)
    assert np.allclose(ours_prediction.mean.numpy(), mean, rtol=1e-6, atol=1e-8)
    rows.append(("predict (mean + full cov, 1000 points), scikit-learn (fit + predict)", seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; Matern-5/2, float64, CPU; median of {args.repeats}")
    for n in args.n:
        rows = bench(n, args.repeats)
        floor = rows[0][1]
        for name, seconds in rows:
            ratio = f"{seconds / floor:5.2f}x" if name.startswith("log ML") else ""
            print(f"n={n:5d}  {name:<72s} {seconds:8.3f} s  {ratio}")


if __name__ == "__main__":
    main()
