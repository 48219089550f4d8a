"""The summary table of a posterior and the warnings that say whether to trust it."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

TABLE_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat", "pareto_k"]
R_HAT_LIMIT = 1.01
MIN_ESS = 400  # Vehtari et al. (2021): bulk and tail ESS >= 400 (100 per chain for 4)
PARETO_K_LIMIT = 0.7  # Vehtari et al. (2024, PSIS): above it importance-sampling estimates fail


def summarize(idata: az.InferenceData) -> pd.DataFrame:
    """ArviZ's summary (mean, sd, 94% HDI, MCSE, bulk/tail ESS, rank-normalised R-hat).

    For importance sampling (method ``is``) the draws are resampled by weight, and
    ArviZ's ESS of them overstates what the weights carry: the ESS columns hold the
    importance-sampling (Kish) ESS of all runs instead, the ArviZ values move to
    ``ess_bulk_resampled`` / ``ess_tail_resampled``, ``mcse_mean`` is ``sd / sqrt(ESS)``
    (Kish's approximation) and ``pareto_k`` is the largest PSIS k over the runs."""
    summary = az.summary(idata, kind="all", round_to="none")
    attrs = idata.posterior.attrs
    if attrs.get("method") == "is" and "ess" in attrs:
        for column in ("ess_bulk", "ess_tail"):
            if column in summary:
                summary[f"{column}_resampled"] = summary[column]
                summary[column] = float(attrs["ess"])
        ks = np.atleast_1d(np.asarray(attrs.get("pareto_k_per_chain", np.nan), dtype=float))
        summary["pareto_k"] = float(np.max(ks)) if ks.size else np.nan
        if "mcse_mean" in summary and "sd" in summary:
            summary["mcse_mean"] = summary["sd"] / np.sqrt(float(attrs["ess"]))
    return summary


def diagnose(idata: az.InferenceData, summary: pd.DataFrame) -> list[str]:
    """Plain-language warnings: R-hat, effective sample size, divergences, SVI stops."""
    method = idata.posterior.attrs.get("method", "")
    warnings: list[str] = []
    if method == "svi":
        if not idata.posterior.attrs.get("svi_converged", 1):
            warnings.append("svi stopped at max_steps before the ELBO settled; "
                            "raise --opt max_steps or --opt lr")
        return warnings
    if method == "is":
        warnings += _importance_warnings(idata.posterior.attrs)
    chains = idata.posterior.sizes["chain"]
    r_hat = summary["r_hat"].dropna()
    high = r_hat[r_hat > R_HAT_LIMIT]
    if len(high):
        warnings.append(f"r_hat > {R_HAT_LIMIT} for {len(high)} parameter(s) "
                        f"(worst {high.idxmax()}: {high.max():.3f}): the chains disagree; "
                        "run longer or reparameterise")
    if chains > 1 and method != "is":
        ess = summary[["ess_bulk", "ess_tail"]].min(axis=1).dropna()
        low = ess[ess < MIN_ESS]
        if len(low):
            warnings.append(f"effective sample size below {MIN_ESS} "
                            f"for {len(low)} parameter(s) (lowest {low.idxmin()}: {low.min():.0f})")
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        count = int(np.asarray(stats["diverging"]).sum())
        if count:
            total = stats["diverging"].size
            warnings.append(f"{count} of {total} draws diverged: the posterior has regions the "
                            "sampler cannot follow; raise --opt target_accept or reparameterise")
    return warnings


def _importance_warnings(attrs: dict) -> list[str]:
    """Pareto k above 0.7 in any run, and an importance-sampling ESS below ``MIN_ESS``."""
    found = []
    ks = np.atleast_1d(np.asarray(attrs.get("pareto_k_per_chain", []), dtype=float))
    bad = np.flatnonzero(ks > PARETO_K_LIMIT)
    if bad.size:
        found.append(f"importance weights have Pareto k > {PARETO_K_LIMIT} in {bad.size} of {ks.size} "
                     f"run(s) (worst {ks.max():.2f}): estimates are unreliable; use --opt "
                     "proposal=guide or more --draws")
    if "ess" in attrs and float(attrs["ess"]) < MIN_ESS:
        found.append(f"importance-sampling effective sample size {float(attrs['ess']):.0f} is below "
                     f"{MIN_ESS}; use --opt proposal=guide or more --draws")
    return found


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width table with the columns users read first."""
    columns = [c for c in TABLE_COLUMNS if c in summary.columns]
    table = summary[columns].copy()
    for column in ("ess_bulk", "ess_tail"):
        if column in table:
            table[column] = table[column].round(0)
    with pd.option_context("display.max_rows", 200, "display.width", 120):
        return table.to_string(float_format=lambda x: f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}")
