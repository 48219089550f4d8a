"""Our batched NUTS / ChEES-HMC against Pyro's NUTS and NumPyro's NUTS, in one run.

    python bench/bench_nuts.py                 # everything, prints a Markdown table
    python bench/bench_nuts.py --quick         # shorter runs, a smoke test
    python bench/bench_nuts.py --device cuda   # our kernels on the GPU (Pyro on CPU)
    bash bench/gpu_check.sh                    # the GPU rows in one device call (see there)

Posteriors: eight schools (non-centred), Bayesian logistic regression on the bundled
breast-cancer data (standardised, N(0, 1) priors on 30 weights and the intercept), and
a 100-d Gaussian whose covariance has eigenvalues spread from 0.01 to 1. Figure: the
minimum bulk ESS over all parameters per second of wall time, warm-up, set-up, tracing
and compilation included. Every configuration runs in its own subprocess, so its peak
memory is its own. NumPyro (``pip install -e ".[bench]"``) runs with float64 like ours;
its rows are skipped with a note when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

# name: (label, chains, warmup, draws)
CONFIGS = {
    "bayesdl_nuts_4": ("bayesdl nuts (4 chains batched)", 4, 1000, 1000),
    "numpyro_nuts_4": ("NumPyro NUTS (4 chains vectorized)", 4, 1000, 1000),
    "pyro_nuts_4": ("Pyro NUTS (4 chains, sequential)", 4, 500, 500),
    "pyro_nuts_jit_4": ("Pyro NUTS, jit (4 chains, sequential)", 4, 500, 500),
    "bayesdl_nuts_compile_4": ("bayesdl nuts, potential=compile, cold cache (4 chains)", 4, 1000, 1000),
    "bayesdl_nuts_compile_warm_4": ("bayesdl nuts, potential=compile, warm cache (4 chains)", 4, 1000,
                                    1000),
    "bayesdl_nuts_eager_4": ("bayesdl nuts, potential=eager (4 chains)", 4, 1000, 1000),
    "bayesdl_chees_1024": ("bayesdl chees (1024 chains batched)", 1024, 500, 100),
    "bayesdl_chees_nograph_1024": ("bayesdl chees, cuda_graph=false (1024 chains batched)", 1024,
                                   500, 100),
    "bayesdl_chees_compile_1024": ("bayesdl chees, potential=compile, cold cache (1024 chains)",
                                   1024, 500, 100),
    "bayesdl_chees_compile_warm_1024": ("bayesdl chees, potential=compile, warm cache (1024 chains)",
                                        1024, 500, 100),
    "bayesdl_nuts_1024": ("bayesdl nuts (1024 chains batched)", 1024, 500, 100),
    "bayesdl_nuts_nograph_1024": ("bayesdl nuts, cuda_graph=false (1024 chains batched)", 1024,
                                  500, 100),
    "numpyro_nuts_1024": ("NumPyro NUTS (1024 chains vectorized)", 1024, 500, 100),
    # the issue asks for ">= 1024 chains" on a GPU: where 1024 chains leave it idle
    # between launches, more chains cost little more time
    "bayesdl_chees_4096": ("bayesdl chees (4096 chains batched)", 4096, 500, 100),
    "numpyro_nuts_4096": ("NumPyro NUTS (4096 chains vectorized)", 4096, 500, 100),
}
# what tracing gives; NUTS x 1024 on CPU; without CUDA graphs (the same as with, on CPU);
# ChEES compiled from a warm cache (measured on a GPU)
OPTIONAL = ("bayesdl_nuts_eager_4", "bayesdl_nuts_1024", "bayesdl_chees_nograph_1024",
            "bayesdl_nuts_nograph_1024", "bayesdl_chees_compile_warm_1024", "bayesdl_chees_4096",
            "numpyro_nuts_4096")
# Pyro's NUTS on the 100-d Gaussian: an earlier session's rows went past the 20-minute
# limit (the plain one took 107 s on 2026-11-22): left out unless named in --configs
# and --posteriors
TOO_SLOW = {("pyro_nuts_4", "gaussian_100d"), ("pyro_nuts_jit_4", "gaussian_100d")}
POSTERIORS = ["eight_schools", "logistic_regression", "gaussian_100d"]
BASELINE = "pyro_nuts_4"


def gaussian_100d_covariance(dim: int = 100, seed: int = 0):
    """A dense covariance with eigenvalues log-spaced from 0.01 to 1, random rotation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * np.logspace(-2, 0, dim)) @ q.T


def gaussian_100d_model(cov):
    import pyro
    import pyro.distributions as dist
    import torch

    dim = cov.shape[0]
    pyro.sample("x", dist.MultivariateNormal(torch.zeros(dim, dtype=cov.dtype),
                                             covariance_matrix=cov))


def numpyro_model(posterior: str):
    """The same posteriors written for NumPyro, and their data."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    from bayesdl.models.eight_schools import eight_schools_data
    from bayesdl.models.regression import breast_cancer_data

    if posterior == "eight_schools":
        data = eight_schools_data()
        y, sigma = jnp.array(data["y"]), jnp.array(data["sigma"])

        def model():
            mu = numpyro.sample("mu", ndist.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", ndist.HalfCauchy(5.0))
            with numpyro.plate("school", 8):
                theta_trans = numpyro.sample("theta_trans", ndist.Normal(0.0, 1.0))
                numpyro.sample("y", ndist.Normal(mu + tau * theta_trans, sigma), obs=y)
        return model
    if posterior == "logistic_regression":
        data = breast_cancer_data()
        X, y = jnp.array(data["X"]), jnp.array(data["y"])

        def model():
            alpha = numpyro.sample("alpha", ndist.Normal(0.0, 1.0))
            beta = numpyro.sample("beta", ndist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
            numpyro.sample("y", ndist.Bernoulli(logits=alpha + X @ beta), obs=y)
        return model
    cov = jnp.array(gaussian_100d_covariance())

    def model():
        numpyro.sample("x", ndist.MultivariateNormal(jnp.zeros(cov.shape[0]), covariance_matrix=cov))
    return model


def run_one(config: str, posterior: str, quick: bool, device: str) -> dict:
    """Run one configuration in this process and return its measurements."""
    import warnings

    warnings.filterwarnings("ignore")
    import arviz as az
    import numpy as np
    import torch

    label, chains, warmup, draws = CONFIGS[config]
    if quick:
        warmup, draws = max(warmup // 5, 50), max(draws // 5, 50)
    gpu_peak, phases = None, {}
    if config.startswith("numpyro"):
        try:
            import jax
            import numpyro
        except ImportError:
            return {"config": config, "posterior": posterior, "skipped": "numpyro not installed"}
        jax.config.update("jax_enable_x64", True)
        from numpyro.infer import MCMC, NUTS

        jax.devices()  # JAX's backend starts at first use: a one-off, like our imports below

        started = time.perf_counter()
        mcmc = MCMC(NUTS(numpyro_model(posterior)), num_warmup=warmup, num_samples=draws,
                    num_chains=chains, chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(1))
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        wall = time.perf_counter() - started
        posterior_draws = az.from_dict(posterior=samples).posterior
        numpyro_version = f"{numpyro.__version__} on {jax.default_backend()}"
    else:
        # torch's compiler stack is imported lazily at first use (torch.func imports
        # Dynamo, ~1 s; potential=compile also Inductor, ~1 s); import it untimed, as
        # NumPyro's JAX is imported untimed above
        import torch._dynamo  # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401
        from step_clock import phase_clock

        import bayesdl

        torch.set_default_dtype(torch.float64)
        method = "chees" if "chees" in config else "nuts"
        options = {"backend": "pyro"} if config.startswith("pyro") else {}
        if "jit" in config:
            options["jit"] = True
        if "nograph" in config:
            options["cuda_graph"] = False
        for evaluation in ("compile", "eager"):
            if f"_{evaluation}_" in config:
                options["potential"] = evaluation
        if posterior == "gaussian_100d":
            model, data = gaussian_100d_model, {"cov": torch.tensor(gaussian_100d_covariance())}
        else:
            model, data = posterior, None
        run_device = device if config.startswith("bayesdl") else "cpu"
        if run_device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        clock = (phase_clock(method, warmup, draws, run_device) if config.startswith("bayesdl")
                 else contextlib.nullcontext({}))
        started = time.perf_counter()
        with clock as phases:
            idata = bayesdl.infer(model, data, method=method, chains=chains, warmup=warmup,
                                  draws=draws, seed=1, progress=False, device=run_device, **options)
        wall = time.perf_counter() - started
        if run_device == "cuda":
            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        posterior_draws = idata.posterior
        numpyro_version = None
    latent = [v for v in posterior_draws.data_vars if v != "theta"]  # theta is derived
    ess = az.ess(posterior_draws[latent], method="bulk")
    min_ess = float(min(np.min(ess[v].values) for v in ess.data_vars))
    return {"config": config, "label": label, "posterior": posterior, "chains": chains,
            "warmup": warmup, "draws": draws, "wall_s": wall, "min_ess_bulk": min_ess,
            "ess_per_s": min_ess / wall, "numpyro": numpyro_version, "gpu_peak_mib": gpu_peak,
            "phases_s": phases,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "POSTERIOR"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--device", default="cpu", help="device of our kernels (cpu or cuda)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per configuration")
    parser.add_argument("--configs", default=",".join(c for c in CONFIGS if c not in OPTIONAL),
                        help=f"comma-separated subset (default: all but {', '.join(OPTIONAL)})")
    parser.add_argument("--posteriors", default=",".join(POSTERIORS), help="comma-separated subset")
    parser.add_argument("--jsonl", help="append each finished row to this file as it ends")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each configuration, interleaved (A B A B ...); the table "
                             "gives the median wall time and the range (a shared machine's "
                             "speed drifts by 20%% and more within minutes)")
    ns = parser.parse_args()
    if ns.repeat < 1:
        parser.error("--repeat must be at least 1")
    asked = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    named = "--configs" in asked and "--posteriors" in asked
    if ns.one:
        print(json.dumps(run_one(ns.one[0], ns.one[1], ns.quick, ns.device)))
        return
    rows: list[dict] = []
    left_out: set[str] = set()
    # every library with its own default threads (all cores), as a user gets them; set
    # OMP_NUM_THREADS=1 on a shared machine (see bench/README.md)
    env = dict(os.environ)
    import tempfile

    for posterior in ns.posteriors.split(","):
        # Inductor's cache: empty for the cold compile row, then reused by the warm one
        inductor_cache = tempfile.mkdtemp(prefix="bench-inductor-")
        runs = [config for _ in range(ns.repeat) for config in ns.configs.split(",")]
        for config in runs:
            if (config, posterior) in TOO_SLOW and not named:
                if config not in left_out:
                    print(f"  {posterior} {config}: left out (name it to run it)", file=sys.stderr)
                left_out.add(config)
                continue
            command = [sys.executable, __file__, "--one", config, posterior, "--device", ns.device]
            env["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
            if ns.quick:
                command.append("--quick")
            try:
                out = subprocess.run(command, capture_output=True, text=True, env=env,
                                     timeout=ns.timeout)
            except subprocess.TimeoutExpired:
                print(f"  {posterior} {config}: over {ns.timeout} s, left out", file=sys.stderr)
                continue
            if out.returncode != 0:
                print(f"  {posterior} {config} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if ns.jsonl:
                with open(ns.jsonl, "a") as stream:
                    stream.write(json.dumps(rows[-1]) + "\n")
            phases = ", ".join(f"{name[:-2]} {seconds:.2f}"
                               for name, seconds in rows[-1].get("phases_s", {}).items())
            print(f"  {posterior:20} {config:20} {rows[-1].get('wall_s', float('nan')):7.1f} s"
                  + (f" ({phases})" if phases else ""), file=sys.stderr)
    import torch

    versions = next((r["numpyro"] for r in rows if r.get("numpyro")), "not installed")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), NumPyro {versions}, "
          f"float64, our device {ns.device}\n")
    wall = "wall s" if ns.repeat == 1 else f"wall s (median, range of {ns.repeat})"
    print(f"| posterior | configuration | chains x (warmup + draws) | {wall} | min bulk ESS "
          "| min ESS/s | vs Pyro NUTS | vs NumPyro (same chains) | peak RSS MiB | GPU MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for posterior in ns.posteriors.split(","):
        mine = median_runs([r for r in rows if r["posterior"] == posterior and "skipped" not in r])
        base = next((r for r in mine if r["config"] == BASELINE), None)
        for r in mine:
            peer = next((p for p in mine if p["config"].startswith("numpyro")
                         and p["chains"] == r["chains"]), None)
            vs_pyro = f"{r['ess_per_s'] / base['ess_per_s']:.1f}x" if base else "-"
            vs_numpyro = f"{r['ess_per_s'] / peer['ess_per_s']:.2f}x" if peer else "-"
            gpu = f"{r['gpu_peak_mib']:.0f}" if r.get("gpu_peak_mib") else "-"
            print(f"| {posterior} | {r['label']} | {r['chains']} x ({r['warmup']} + {r['draws']}) | "
                  f"{r['wall_text']} | {r['min_ess_bulk']:.0f} | {r['ess_per_s']:.1f} | {vs_pyro} | "
                  f"{vs_numpyro} | {r['peak_rss_mib']:.0f} | {gpu} |")


def median_runs(rows: list[dict]) -> list[dict]:
    """One row per configuration, in first-run order: the run with the median wall time
    (the lower middle one of an even count), its ESS/s, and the range of the runs' wall
    times as ``wall_text`` ("7.1" for one run, "7.1 (6.8-9.8)" for several). Each run
    uses the same seed, so the ESS is the same in every run; only the time varies."""
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
    merged = []
    for runs in by_config.values():
        ordered = sorted(runs, key=lambda r: r["wall_s"])
        middle = dict(ordered[(len(ordered) - 1) // 2])
        middle["wall_text"] = f"{middle['wall_s']:.1f}" + (
            f" ({ordered[0]['wall_s']:.1f}-{ordered[-1]['wall_s']:.1f})" if len(runs) > 1 else "")
        middle["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
        merged.append(middle)
    return merged


if __name__ == "__main__":
    main()
