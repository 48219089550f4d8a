"""Diagnostic plots of a run, drawn by ArviZ and saved as PNG."""

from __future__ import annotations

from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bayesdl.errors import BayesdlError  # noqa: E402

KINDS = ("trace", "rank", "pair", "forest", "energy")
MAX_VARIABLES = 8  # more panels than this are unreadable; pick with var_names
# a trace or rank plot draws a line, a density and a histogram per chain: beyond a few
# chains they are unreadable, and with 1024 (ChEES) drawing them took minutes
MAX_CHAINS_DRAWN = 8


def plot(idata: az.InferenceData, kind: str, path: str | Path,
         var_names: list[str] | None = None) -> Path:
    """Draw ``kind`` for the run and save it to ``path`` (PNG). Trace and rank plots
    show the first ``MAX_CHAINS_DRAWN`` chains of a many-chain run, and say so."""
    if kind not in KINDS:
        raise BayesdlError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    available = list(idata.posterior.data_vars)
    if var_names:
        unknown = [v for v in var_names if v not in available]
        if unknown:
            raise BayesdlError(f"no variable {unknown[0]!r} in this run; it has {', '.join(available)}")
    else:
        var_names = available[:MAX_VARIABLES]
    if kind == "energy" and ("sample_stats" not in idata.groups()
                             or "energy" not in idata.sample_stats):
        raise BayesdlError("this run has no energy statistics (only HMC/NUTS record them)")
    chains = idata.posterior.sizes.get("chain", 1)
    shown = idata
    if kind in ("trace", "rank") and chains > MAX_CHAINS_DRAWN:
        shown = idata.isel(chain=slice(0, MAX_CHAINS_DRAWN))
    if kind == "trace":
        axes = az.plot_trace(shown, var_names=var_names, compact=True)
    elif kind == "rank":
        axes = az.plot_rank(shown, var_names=var_names)
    elif kind == "pair":
        axes = az.plot_pair(idata, var_names=var_names,
                            divergences="sample_stats" in idata.groups()
                            and "diverging" in idata.sample_stats)
    elif kind == "forest":
        axes = az.plot_forest(idata, var_names=var_names, combined=True, r_hat=True, ess=True)
    else:
        axes = az.plot_energy(idata)
    figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
    if shown is not idata:
        figure.suptitle(f"chains 0-{MAX_CHAINS_DRAWN - 1} of {chains}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
