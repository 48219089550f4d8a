"""Numerical faults during sampling are recorded per draw and reported, never a crash.

A target whose log density is NaN on a region (every kernel must treat it as -inf and
reject, so the draws stay out of it), and the centred eight-schools funnel, where NUTS
diverges: both runs finish, the draws are finite and in the support, divergences are
in ``sample_stats`` per draw, and the summary's warnings say so.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesdl
from bayesdl.summary import diagnose, summarize

EDGE = 1.0


def normal_with_a_nan_region():
    """N(0, 1) whose log density is NaN above ``EDGE``: a truncated normal."""
    x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    pyro.factor("hole", torch.where(x > EDGE, torch.tensor(math.nan, dtype=torch.float64),
                                    torch.tensor(0.0, dtype=torch.float64)))


@pytest.mark.filterwarnings("error:compiling the NUTS transition failed")  # no fallback
@pytest.mark.parametrize("method", ["nuts", "hmc", "mh", "mala",
                                    pytest.param("nuts-compiled", marks=pytest.mark.slow)])
def test_a_nan_region_is_rejected_and_the_run_finishes(method):
    options = {}
    if method == "nuts-compiled":  # the NaN handling inside NUTS's compiled loop
        method, options = "nuts", {"potential": "compile"}
    idata = bayesdl.infer(normal_with_a_nan_region, method=method, chains=4, warmup=300,
                          draws=300, seed=3, progress=False, **options)
    x = idata.posterior["x"].values
    assert np.isfinite(x).all()
    assert (x <= EDGE).all()
    # the truncated normal's mean, -phi(1) / Phi(1), within 5 Monte Carlo standard errors
    phi = math.exp(-0.5 * EDGE**2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(EDGE / math.sqrt(2)))
    summary = summarize(idata)
    mcse = float(summary.loc["x", "mcse_mean"])
    assert abs(float(x.mean()) + phi / big_phi) < 5 * mcse + 1e-3
    if method in ("nuts", "hmc"):  # trajectories that run into the hole count as divergent
        diverging = idata.sample_stats["diverging"].values
        assert diverging.dtype == bool and diverging.shape == x.shape
        assert diverging.any()
        assert any("diverged" in line for line in diagnose(idata, summary))


def test_nuts_on_the_funnel_records_and_reports_divergences():
    idata = bayesdl.infer("eight_schools", args={"centered": True}, method="nuts", chains=4,
                          warmup=300, draws=300, seed=0, progress=False)
    for name in ("mu", "tau", "theta"):
        assert np.isfinite(idata.posterior[name].values).all()
    assert (idata.posterior["tau"].values > 0).all()
    diverging = idata.sample_stats["diverging"].values
    assert diverging.shape == (4, 300) and diverging.any()
    warnings = diagnose(idata, summarize(idata))
    assert any(f"{int(diverging.sum())} of 1200 draws diverged" in line for line in warnings)
