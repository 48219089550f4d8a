"""Gaussian-process regression: type-II ML, NNGP kernels, NUTS, and Mauna Loa CO2.

    python examples/gp_regression.py          # about a minute on a laptop CPU

1. Fit each kernel's hyper-parameters by maximising the marginal likelihood on the
   built-in synthetic data and compare the evidence (log p(y | theta_hat)).
2. Sample the hyper-parameters with NUTS instead (bayesdl.infer on the built-in model).
3. Mauna Loa CO2 (bundled): fit on 1958-1989, predict 1990-2001 with each kernel and
   report the RMSE and the coverage of the 95% predictive intervals (noisy outputs).
"""

import arviz as az
import torch

import bayesdl
from bayesdl.models.gp import fit_type2_ml, gp_regression_data, predict

torch.set_default_dtype(torch.float64)

# 1. type-II maximum likelihood on the synthetic set
data = {k: torch.as_tensor(v) for k, v in gp_regression_data("synthetic", num_points=50).items()}
for kernel in ("rbf", "matern32", "matern52", "nngp_relu", "nngp_erf"):
    fit = fit_type2_ml(kernel, data["X"], data["y"])
    params = ", ".join(f"{k}={v:.3g}" for k, v in fit.params.items())
    print(f"{kernel:10s} log ML {fit.log_marginal_likelihood:8.2f}   {params}")

# 2. the same model (default kernel: rbf) with its hyper-parameters sampled by NUTS
idata = bayesdl.infer("gp_regression", method="nuts", chains=2, warmup=300, draws=300, progress=False)
print(az.summary(idata, var_names=["lengthscale", "variance", "noise"]))

# 3. Mauna Loa: extrapolate twelve years
co2 = {k: torch.as_tensor(v) for k, v in gp_regression_data("co2").items()}
train = co2["X"][:, 0] < 1.0  # x = (year - 1980) / 10, so 1990
X, y, X_test, y_test = co2["X"][train], co2["y"][train], co2["X"][~train], co2["y"][~train]
print(f"\nMauna Loa CO2: {len(y)} training months, {len(y_test)} test months (standardised units)")
for kernel in ("rbf", "matern52", "nngp_relu"):
    fit = fit_type2_ml(kernel, X, y)
    noisy = predict(kernel, X, y, X_test, fit.params, noiseless=False, full_cov=False)
    rmse = (noisy.mean - y_test).pow(2).mean().sqrt().item()
    inside = ((y_test - noisy.mean).abs() <= 1.96 * noisy.cov.sqrt()).double().mean().item()
    print(f"{kernel:10s} test RMSE {rmse:.3f}   95% interval coverage {inside:.0%}")
