"""Thousands of Metropolis chains in one tensor: `python examples/many_chains_mh.py`.

Every chain advances in the same kernel call (the chain is a tensor dimension), so
2,000 chains cost little more than 20 on a CPU and run unchanged on a GPU
(`device="cuda"`).
"""

import time

import arviz as az

import bayesdl

started = time.perf_counter()
idata = bayesdl.infer("linear_regression", method="mh", chains=2000, warmup=1000, draws=200,
                      args={"noise": 0.5}, progress=True)
print(f"{2000 * 1200:,} MH steps in {time.perf_counter() - started:.1f} s")
print(az.summary(idata, var_names=["alpha", "beta"], kind="stats"))
