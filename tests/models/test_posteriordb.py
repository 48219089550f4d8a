"""Built-in posteriordb models under ``--method nuts`` against posteriordb's reference draws.

Each reference file (``../shared/reference/posteriordb/*.json``, see its README) holds
the mean, sd and Monte Carlo standard error of the mean of every reported parameter,
from 10000 rstan NUTS draws. For every reference parameter we require

    |mean - ref_mean| <= 4 * sqrt(mcse^2 + ref_mcse_mean^2)   and   |sd - ref_sd| <= 0.10 * ref_sd

with ``mcse`` ArviZ's ``mcse(method="mean")`` of our draws. Run lengths are chosen per
posterior so that the sd check has several standard errors of room at a fixed seed.
Our NUTS is checked on every posterior and Pyro's (``backend="pyro"``) on eight
schools. The chains of a case are split over two ``bayesdl.infer`` calls (seeds ``SEED``
and ``SEED + 1``, which share no chain) run in two processes, and their draws are pooled.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pytest
import torch

import bayesdl

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "posteriordb"
Z_MAX = 4.0
SD_RTOL = 0.10
SEED = 2024

needs_reference = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason=f"posteriordb reference files not found at {REFERENCE_DIR}"
)


@dataclass(frozen=True)
class Case:
    """A built-in model, its posteriordb reference file and the NUTS run that checks it."""

    model: str
    reference: str
    chains: int
    warmup: int
    draws: int
    options: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("eight_schools", "eight_schools-eight_schools_noncentered", 8, 500, 1000,
         {"target_accept": 0.9}),
    Case("arK", "arK-arK", 8, 300, 700, {"dense_mass": True}),
    # rho and alpha mix slowly (ESS ~0.15 per draw); target_accept 0.9 leaves divergences
    # that shrink alpha's sd by ~5%, 0.95 does not. Depth 8 only caps early warm-up.
    Case("gp_pois_regr", "gp_pois_regr-gp_pois_regr", 8, 500, 1500,
         {"dense_mass": True, "target_accept": 0.95, "max_tree_depth": 8}),
    # corr(beta[1], beta[2]) = -0.99: a dense mass matrix turns ~24 leapfrog steps into ~5.
    Case("kidiq", "kidiq-kidscore_momiq", 8, 300, 700, {"dense_mass": True, "max_tree_depth": 8}),
    Case("low_dim_gauss_mix", "low_dim_gauss_mix-low_dim_gauss_mix", 8, 300, 700),
    # Pyro's own NUTS (--opt backend=pyro) stays checked on one posterior
    Case("eight_schools", "eight_schools-eight_schools_noncentered", 4, 500, 1000,
         {"backend": "pyro", "jit": True, "target_accept": 0.9}),
]
PARTS = 2  # processes per case; each runs chains // PARTS chains


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def load_reference(stem: str) -> dict[str, dict[str, float]]:
    """The ``reference`` table of a posteriordb file: parameter -> summary statistics."""
    return json.loads((REFERENCE_DIR / f"{stem}.json").read_text())["reference"]


def run_nuts(case: Case) -> list[az.InferenceData]:
    """The case's NUTS run as ``PARTS`` ``bayesdl.infer`` calls in parallel processes."""
    assert case.chains % PARTS == 0, f"{case.model}: chains must be a multiple of {PARTS}"
    workers = min(PARTS, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [
            pool.submit(bayesdl.infer, case.model, method="nuts", chains=case.chains // PARTS,
                        warmup=case.warmup, draws=case.draws, seed=SEED + part, progress=False,
                        **case.options)
            for part in range(PARTS)
        ]
        return [future.result() for future in futures]


def parameter_draws(idata: az.InferenceData, name: str) -> np.ndarray:
    """Draws ``[chain, draw]`` of a Stan-style parameter name (``mu``, ``theta[3]``)."""
    match = re.fullmatch(r"(\w+)\[(\d+)\]", name)
    if match is None:
        return idata.posterior[name].values
    variable = idata.posterior[match[1]]
    assert variable.ndim == 3, f"{match[1]} has dims {variable.dims}, expected one event axis"
    return variable.values[..., int(match[2]) - 1]


def compare(parts: list[az.InferenceData],
            reference: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per reference parameter: our mean, sd, the mean's z-score and the sd's relative error,
    from the chains of all ``parts`` pooled."""
    rows = []
    for name, ref in reference.items():
        draws = np.concatenate([parameter_draws(idata, name) for idata in parts], axis=0)
        mean, sd = float(draws.mean()), float(draws.std(ddof=1))
        # .item(): with numba installed ArviZ returns a 1-element array
        mcse = np.asarray(az.mcse(draws, method="mean")).item()
        z = (mean - ref["mean"]) / math.hypot(mcse, ref["mcse_mean"])
        rows.append({"name": name, "mean": mean, "ref_mean": ref["mean"], "mcse": mcse,
                     "ref_mcse": ref["mcse_mean"], "z": z, "sd": sd, "ref_sd": ref["sd"],
                     "sd_rel": (sd - ref["sd"]) / ref["sd"]})
    return rows


@needs_reference
def test_every_reference_file_has_a_case() -> None:
    """A new reference file must come with a case here, or it would go unchecked."""
    files = {path.stem for path in REFERENCE_DIR.glob("*.json")}
    assert files == {case.reference for case in CASES}


@pytest.mark.slow
@needs_reference
@pytest.mark.parametrize("case", CASES, ids=[case.model + (
    "-pyro" if case.options.get("backend") == "pyro" else "") for case in CASES])
def test_nuts_matches_posteriordb_reference(case: Case) -> None:
    """NUTS reproduces the reference mean (within 4 MCSE) and sd (within 10%)."""
    reference = load_reference(case.reference)
    parts = run_nuts(case)
    rows = compare(parts, reference)
    assert [row["name"] for row in rows] == list(reference)
    table = "\n".join(
        f"{r['name']:>10}: mean {r['mean']:.4g} vs {r['ref_mean']:.4g} (z {r['z']:+.2f}), "
        f"sd {r['sd']:.4g} vs {r['ref_sd']:.4g} ({r['sd_rel']:+.1%})" for r in rows
    )
    print(f"{case.model}: worst |z| {max(abs(r['z']) for r in rows):.2f}, worst |sd error| "
          f"{max(abs(r['sd_rel']) for r in rows):.1%}, "
          f"{max(idata.posterior.attrs['wall_time_s'] for idata in parts):.0f} s\n{table}")
    bad_mean = [r["name"] for r in rows if abs(r["z"]) > Z_MAX]
    bad_sd = [r["name"] for r in rows if abs(r["sd_rel"]) > SD_RTOL]
    assert not bad_mean and not bad_sd, (
        f"{case.model}: means off {bad_mean}, sds off {bad_sd}\n{table}"
    )


def test_nuts_eight_schools_inference_data() -> None:
    """A short NUTS run yields every InferenceData group, ArviZ's sampler stats and LOO."""
    idata = bayesdl.infer("eight_schools", method="nuts", chains=2, warmup=200, draws=200,
                          seed=SEED, progress=False)
    for group in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        assert hasattr(idata, group), f"missing group {group}"
    posterior = idata.posterior
    assert (posterior.sizes["chain"], posterior.sizes["draw"]) == (2, 200)
    assert {"mu", "tau", "theta", "theta_trans"} <= set(posterior.data_vars)
    assert posterior["theta"].dims == ("chain", "draw", "school")
    stats = idata.sample_stats
    for name in ("diverging", "energy", "step_size", "acceptance_rate", "lp", "n_steps",
                 "tree_depth"):
        assert name in stats, f"sample_stats lacks {name}"
        assert stats[name].dims == ("chain", "draw")
        assert np.isfinite(stats[name].values.astype(float)).all(), name
    assert stats["diverging"].dtype == bool
    assert ((stats["acceptance_rate"] >= 0) & (stats["acceptance_rate"] <= 1)).all()
    assert (stats["step_size"] > 0).all() and (stats["n_steps"] >= 1).all()
    np.testing.assert_allclose(idata.observed_data["y"].values,
                               [28, 8, -3, 7, -1, 1, 18, 12])
    assert idata.log_likelihood["y"].shape == (2, 200, 8)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_samples == 400
