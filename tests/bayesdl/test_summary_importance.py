"""The summary of an importance-sampling run (method ``is``) reports the weights' own
ESS and Pareto k, not ArviZ's ESS of the resampled draws (which counts duplicated draws
as independent and overstates it), and warns when k > 0.7 or the ESS is low."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest

import bayesdl
from bayesdl.summary import diagnose, format_table, summarize


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def synthetic(attrs: dict) -> az.InferenceData:
    rng = np.random.default_rng(0)
    idata = az.from_dict(posterior={"mu": rng.normal(size=(2, 500))})
    idata.posterior.attrs.update(attrs)
    return idata


def test_is_run_reports_importance_ess_and_pareto_k():
    idata = bayesdl.infer("eight_schools", method="is", chains=2, draws=2000, seed=0, progress=False)
    attrs = idata.posterior.attrs
    summary = summarize(idata)
    assert (summary["ess_bulk"] == attrs["ess"]).all() and (summary["ess_tail"] == attrs["ess"]).all()
    assert summary["pareto_k"].iloc[0] == pytest.approx(max(attrs["pareto_k_per_chain"]))
    # resampling duplicates draws: ArviZ's ESS of them exceeds what the weights carry
    assert (summary["ess_bulk_resampled"] > summary["ess_bulk"]).mean() > 0.5
    np.testing.assert_allclose(summary["mcse_mean"], summary["sd"] / np.sqrt(attrs["ess"]))
    assert "pareto_k" in format_table(summary)
    assert not any("Pareto" in line for line in diagnose(idata, summary))


def test_high_pareto_k_and_low_ess_are_warned_about():
    idata = synthetic({"method": "is", "ess": 120.0, "pareto_k_per_chain": [0.4, 0.93]})
    found = diagnose(idata, summarize(idata))
    assert any("Pareto k > 0.7 in 1 of 2 run(s) (worst 0.93)" in line for line in found)
    assert any("effective sample size 120 is below 400" in line for line in found)
    fine = synthetic({"method": "is", "ess": 900.0, "pareto_k_per_chain": [0.4, 0.5]})
    assert diagnose(fine, summarize(fine)) == []


def test_other_methods_keep_arviz_ess():
    idata = synthetic({"method": "mh"})
    summary = summarize(idata)
    assert "pareto_k" not in summary and "ess_bulk_resampled" not in summary
    assert summary["ess_bulk"].iloc[0] == pytest.approx(az.ess(idata)["mu"].item())
