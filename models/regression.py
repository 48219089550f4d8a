"""Linear and logistic regression: the first models a new user reaches for.

``linear_regression`` generates its data (fixed seed); with ``--arg noise=S`` the
noise scale is known and the posterior of the coefficients is Gaussian in closed form
(used to check mh and svi). ``logistic_regression`` uses the Wisconsin breast-cancer
data bundled with bayesdl (569 tumours, 30 standardised features; Street, Wolberg &
Mangasarian 1993, UCI, CC BY 4.0) with N(0, 1) priors, as in NumPyro's benchmarks.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from bayesdl.data_files import read_data_file
from bayesdl.data_schema import DataField
from bayesdl.models.registry import bundled_path, register


def linear_regression_data(num_points: int = 100, num_features: int = 3, seed: int = 0) -> dict:
    """y = 1 + X @ [1, -2, 0.5, 0, ...] + N(0, 0.5^2), X ~ N(0, 1); fixed seed."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(num_points, num_features))
    beta = np.zeros(num_features)
    beta[:3] = [1.0, -2.0, 0.5][:num_features]
    y = 1.0 + X @ beta + 0.5 * rng.normal(size=num_points)
    return {"X": X, "y": y}


@register(
    "linear_regression",
    "Bayesian linear regression on generated data (--arg noise=S fixes the noise scale)",
    data=linear_regression_data,
    schema={"X": DataField(("obs", "feature")), "y": DataField(("obs",))},
    dims={"beta": ["feature"], "y": ["obs"]},
)
def linear_regression(X, y, prior_scale: float = 10.0, noise: float = 0.0):
    alpha = pyro.sample("alpha", dist.Normal(0.0, prior_scale))
    beta = pyro.sample("beta", dist.Normal(0.0, prior_scale).expand([X.shape[-1]]).to_event(1))
    if noise > 0:
        sigma = torch.as_tensor(noise, dtype=X.dtype, device=X.device)
    else:
        sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
    with pyro.plate("obs", X.shape[0]):
        pyro.sample("y", dist.Normal(alpha + X @ beta, sigma), obs=y)


def breast_cancer_data() -> dict:
    """The bundled, standardised breast-cancer data: X [569, 30], y in {0, 1}."""
    with bundled_path("breast_cancer.csv") as path:
        return read_data_file(path)


@register(
    "logistic_regression",
    "Bayesian logistic regression on the bundled breast-cancer data (569 x 30)",
    data=breast_cancer_data,
    schema={"X": DataField(("obs", "feature")), "y": DataField(("obs",), kind="int")},
    dims={"beta": ["feature"], "y": ["obs"]},
)
def logistic_regression(X, y, prior_scale: float = 1.0):
    alpha = pyro.sample("alpha", dist.Normal(0.0, prior_scale))
    beta = pyro.sample("beta", dist.Normal(0.0, prior_scale).expand([X.shape[-1]]).to_event(1))
    with pyro.plate("obs", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)
