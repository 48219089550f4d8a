"""Simulation-based calibration of every sampling method on two models with a
closed-form posterior, larger than the test suite's (tests/bayesdl/test_calibration.py).

    python bench/bench_sbc.py                          # N = 200, all methods, both models
    python bench/bench_sbc.py --sbc 100 --methods nuts,mh --out sbc-results

Models: ``gaussian_mle`` (normal mean and variance, conjugate NIG prior, 10 points) and
``linear_regression`` with known noise (8 points, 2 features, N(0, 1) priors). Each
row: replications, bins, the smallest per-parameter chi-square p-value, the Bonferroni
verdict at family-wise 0.01, median kept draws, and seconds per replication. With
``--out DIR`` every (method, model) writes its ranks.csv, sbc.json and ranks.png there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesdl  # noqa: E402

MODELS = {
    "gaussian_mle": {"num_points": 10},
    "linear_regression": {"noise": 1.0, "num_points": 8, "num_features": 2, "prior_scale": 1.0},
}
# per replication: as in the tests, a little longer
RUNS = {
    "nuts": dict(chains=4, warmup=150, draws=50),
    "hmc": dict(chains=4, warmup=150, draws=50, num_steps=8),
    "chees": dict(chains=32, warmup=150, draws=10),
    "mh": dict(chains=8, warmup=300, draws=100),
    "mala": dict(chains=8, warmup=200, draws=50),
    "slice": dict(chains=2, warmup=50, draws=50),
    "svi": dict(chains=1, warmup=0, draws=200, lr=0.1, max_steps=600, window=25),
    "is": dict(chains=1, warmup=0, draws=2000),
    "smc": dict(chains=1, warmup=0, draws=1000),
}
PER_MODEL = {("svi", "linear_regression"): dict(guide="mvn")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sbc", type=int, default=200, help="replications (default 200)")
    parser.add_argument("--methods", default=",".join(RUNS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", help="folder for each check's ranks.csv, sbc.json, ranks.png")
    parser.add_argument("--json", help="write the table as JSON here")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = []
    print(f"{'method':<7}{'model':<19}{'N':>5}{'bins':>5}{'min p':>9}  {'verdict':<12}"
          f"{'kept':>6}{'s/rep':>7}")
    for method in ns.methods.split(","):
        for model in ns.models.split(","):
            settings = {**RUNS[method], **PER_MODEL.get((method, model), {})}
            out = Path(ns.out) / f"{model}-{method}" if ns.out else None
            started = time.perf_counter()
            result = bayesdl.check(model, method=method, sbc=ns.sbc, seed=ns.seed,
                                   args=MODELS[model], progress=False, out=out, **settings)
            per_rep = (time.perf_counter() - started) / ns.sbc
            row = {"method": method, "model": model, "replications": ns.sbc, "bins": result.bins,
                   "min_p": float(np.min(result.p_values)), "passed": result.passed,
                   "flagged": result.flagged, "median_kept": float(np.median(result.kept)),
                   "seconds_per_replication": per_rep}
            rows.append(row)
            verdict = "uniform" if result.passed else "FAIL " + ",".join(result.flagged)
            print(f"{method:<7}{model:<19}{ns.sbc:>5}{result.bins:>5}{row['min_p']:>9.3g}  "
                  f"{verdict:<12}{row['median_kept']:>6.0f}{per_rep:>7.2f}", flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
