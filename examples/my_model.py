"""A model file for the CLI: `bayesdl infer examples/my_model.py:model --data examples/my_data.csv`.

Data columns arrive as keyword arguments (x, y); a function named `guide` (or
`model_guide`) in the same file is used by `--method svi`.
"""

import pyro
import pyro.distributions as dist


def model(x, y):
    slope = pyro.sample("slope", dist.Normal(0.0, 10.0))
    intercept = pyro.sample("intercept", dist.Normal(0.0, 10.0))
    noise = pyro.sample("noise", dist.HalfNormal(5.0))
    with pyro.plate("obs", x.shape[0]):
        pyro.sample("y", dist.Normal(intercept + slope * x, noise), obs=y)
