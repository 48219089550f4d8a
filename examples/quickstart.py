"""Quick start: a built-in model, then your own Pyro model, from Python.

    python examples/quickstart.py
"""

import arviz as az
import pyro
import pyro.distributions as dist
import torch

import bayesdl

# 1. A built-in model with its bundled data.
idata = bayesdl.infer("eight_schools", method="nuts", chains=2, warmup=300, draws=300)
print(az.summary(idata, var_names=["mu", "tau"]))


# 2. Your own model: data come in as keyword arguments, observations through obs=.
def coin(flips):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("flip", flips.shape[0]):
        pyro.sample("flips", dist.Bernoulli(p), obs=flips)


flips = torch.tensor([1.0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
idata = bayesdl.infer(coin, {"flips": flips}, method="mh", chains=100, warmup=500, draws=500)
# Exact posterior: Beta(2 + 7, 2 + 3), mean 9/14 = 0.643
print(f"posterior mean of p: {float(idata.posterior['p'].mean()):.3f} (exact 0.643)")
print(az.loo(idata))
