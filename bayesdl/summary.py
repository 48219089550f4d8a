"""The summary table of a posterior and the warnings that say whether to trust it."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

TABLE_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat"]
R_HAT_LIMIT = 1.01
MIN_ESS = 400  # Vehtari et al. (2021): bulk and tail ESS >= 400 (100 per chain for 4)


def summarize(idata: az.InferenceData) -> pd.DataFrame:
    """ArviZ's summary (mean, sd, 94% HDI, MCSE, bulk/tail ESS, rank-normalised R-hat)."""
    return az.summary(idata, kind="all", round_to="none")


def diagnose(idata: az.InferenceData, summary: pd.DataFrame) -> list[str]:
    """Plain-language warnings: R-hat, effective sample size, divergences, SVI stops."""
    method = idata.posterior.attrs.get("method", "")
    warnings: list[str] = []
    if method == "svi":
        if not idata.posterior.attrs.get("svi_converged", 1):
            warnings.append("svi stopped at max_steps before the ELBO settled; "
                            "raise --opt max_steps or --opt lr")
        return warnings
    chains = idata.posterior.sizes["chain"]
    r_hat = summary["r_hat"].dropna()
    high = r_hat[r_hat > R_HAT_LIMIT]
    if len(high):
        warnings.append(f"r_hat > {R_HAT_LIMIT} for {len(high)} parameter(s) "
                        f"(worst {high.idxmax()}: {high.max():.3f}): the chains disagree; "
                        "run longer or reparameterise")
    if chains > 1:
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


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width table with the columns users read first."""
    columns = [c for c in TABLE_COLUMNS if c in summary.columns]
    table = summary[columns].copy()
    for column in ("ess_bulk", "ess_tail"):
        if column in table:
            table[column] = table[column].round(0)
    with pd.option_context("display.max_rows", 200, "display.width", 120):
        return table.to_string(float_format=lambda x: f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}")
