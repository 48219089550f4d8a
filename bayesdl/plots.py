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


def plot(idata: az.InferenceData, kind: str, path: str | Path,
         var_names: list[str] | None = None) -> Path:
    """Draw ``kind`` for the run and save it to ``path`` (PNG)."""
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
    if kind == "trace":
        axes = az.plot_trace(idata, var_names=var_names, compact=True)
    elif kind == "rank":
        axes = az.plot_rank(idata, var_names=var_names)
    elif kind == "pair":
        axes = az.plot_pair(idata, var_names=var_names,
                            divergences="sample_stats" in idata.groups()
                            and "diverging" in idata.sample_stats)
    elif kind == "forest":
        axes = az.plot_forest(idata, var_names=var_names, combined=True, r_hat=True, ess=True)
    else:
        axes = az.plot_energy(idata)
    figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
