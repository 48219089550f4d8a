"""Batched random-walk MH against the ways a Pyro user would otherwise get a posterior.

    python bench/bench_mh.py            # all configurations, prints a Markdown table
    python bench/bench_mh.py --quick    # shorter runs, for a smoke test

Each configuration runs in its own subprocess (so peak RSS is its own) on one model,
and reports min bulk ESS over all parameters, wall time (warm-up and set-up
included), min-ESS per second, and the ratio to Pyro's NUTS on the same model.
Peers: Pyro's NUTS (4 chains, one after another), and our own MH kernel driven by
``pyro.infer.MCMC`` chain by chain (what batching the chains buys).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CONFIGS = {
    # name: (label, chains, warmup, draws)
    "pyro_nuts": ("Pyro NUTS (4 chains, sequential)", 4, 1000, 1000),
    "pyro_mcmc_mh": ("our MH kernel in pyro.infer.MCMC (4 chains, sequential)", 4, 1000, 1000),
    "bayesdl_mh_4": ("bayesdl mh, 4 batched chains", 4, 1000, 1000),
    "bayesdl_mh_1024": ("bayesdl mh, 1024 batched chains", 1024, 1000, 200),
}
MODELS = ["eight_schools", "linear_regression"]


def run_one(config: str, model_name: str, quick: bool) -> dict:
    """Run one configuration in this process and return its measurements."""
    import warnings

    warnings.filterwarnings("ignore")
    import arviz as az
    import numpy as np
    import pyro
    import torch

    import bayesdl
    from bayesdl.inference import RandomWalkMH
    from bayesdl.model_source import load_model_spec

    label, chains, warmup, draws = CONFIGS[config]
    if quick:
        warmup, draws = warmup // 5, max(draws // 5, 50)
    args = {"noise": 0.5} if model_name == "linear_regression" else {}
    torch.set_default_dtype(torch.float64)
    started = time.perf_counter()
    if config.startswith("bayesdl_mh") or config == "pyro_nuts":
        method = "nuts" if config == "pyro_nuts" else "mh"
        options = {"backend": "pyro"} if config == "pyro_nuts" else {}
        idata = bayesdl.infer(model_name, method=method, chains=chains, warmup=warmup,
                              draws=draws, seed=1, progress=False, args=args, **options)
        posterior = idata.posterior
    else:
        spec = load_model_spec(model_name, None, args, torch.device("cpu"), torch.float64)
        per_chain = []
        for chain in range(chains):
            pyro.set_rng_seed(chain)
            mcmc = pyro.infer.MCMC(RandomWalkMH(spec.model), num_samples=draws,
                                   warmup_steps=warmup, disable_progbar=True)
            mcmc.run(**spec.data)
            per_chain.append(mcmc.get_samples())
        posterior = az.from_dict(posterior={
            k: np.stack([s[k].numpy() for s in per_chain]) for k in per_chain[0]
        }).posterior
    wall = time.perf_counter() - started
    latent = [v for v in posterior.data_vars if v != "theta"]  # theta is derived
    ess = az.ess(posterior[latent], method="bulk")
    min_ess = float(min(np.min(ess[v].values) for v in ess.data_vars))
    return {"config": config, "label": label, "model": model_name, "chains": chains,
            "warmup": warmup, "draws": draws, "wall_s": wall, "min_ess_bulk": min_ess,
            "ess_per_s": min_ess / wall,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    ns = parser.parse_args()
    if ns.one:
        print(json.dumps(run_one(ns.one[0], ns.one[1], ns.quick)))
        return
    rows = []
    for model_name in MODELS:
        for config in CONFIGS:
            command = [sys.executable, __file__, "--one", config, model_name]
            if ns.quick:
                command.append("--quick")
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {model_name:18} {config:16} {rows[-1]['wall_s']:7.1f} s", file=sys.stderr)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} (threads {torch.get_num_threads()}), CPU, float64\n")
    print("| model | configuration | chains x (warmup + draws) | wall s | min bulk ESS "
          "| min ESS/s | ratio to Pyro NUTS | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name in MODELS:
        base = next(r for r in rows if r["model"] == model_name and r["config"] == "pyro_nuts")
        for r in (r for r in rows if r["model"] == model_name):
            print(f"| {model_name} | {r['label']} | {r['chains']} x ({r['warmup']} + {r['draws']})"
                  f" | {r['wall_s']:.1f} | {r['min_ess_bulk']:.0f} | {r['ess_per_s']:.1f} | "
                  f"{r['ess_per_s'] / base['ess_per_s']:.2f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
